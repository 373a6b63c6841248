"""What ``predict`` returns: a small immutable record."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Prediction"]


@dataclass(frozen=True)
class Prediction:
    """One inference: the class, how sure, where it stopped and what it cost.

    ``score`` is the confidence at the exit taken (the policy's measure: max-softmax by
    default). ``stages_run`` counts the stages executed on this device; ``offloaded`` is
    true when a server ran the rest.
    """

    label: int
    score: float
    exit: int
    stages_run: int
    latency_ms: float
    offloaded: bool = False
    name: str | None = None

    def __str__(self) -> str:
        what = self.name if self.name is not None else str(self.label)
        where = "offloaded" if self.offloaded else f"exit {self.exit}"
        return f"{what} ({self.score:.2f}, {where}, {self.latency_ms:.3f} ms)"
