"""What ``predict`` returns: a small immutable record (a NamedTuple: cheap to make)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["OffloadInfo", "Prediction"]


@dataclass(frozen=True)
class OffloadInfo:
    """How an input met the server (split computing).

    ``split``: the stage whose input was sent (0: the input itself). ``bytes_sent``: the
    HTTP request's size on the wire (headers and body, compressed when that paid).
    ``rtt_ms``: from sending to the parsed answer (or to the failure). ``fallback``: the
    server did not answer usefully (``error`` says why) and the device finished the input
    itself; ``bytes_sent`` is then 0 when the circuit breaker kept it from even trying.
    """

    split: int
    bytes_sent: int
    rtt_ms: float
    fallback: bool = False
    error: str | None = None


class Prediction(NamedTuple):
    """One inference: the class, how sure, where it stopped and what it cost.

    ``score`` is the confidence at the exit taken (the policy's measure: max-softmax by
    default). ``stages_run`` counts the stages executed on this device; ``offloaded`` is
    true when a server ran the rest (then ``exit`` is the last exit, run there).
    ``offload`` is set whenever the policy chose to send this input to a server, whether
    it answered or the device fell back to finishing it (``fallback``).
    """

    label: int
    score: float
    exit: int
    stages_run: int
    latency_ms: float
    offloaded: bool = False
    name: str | None = None
    offload: OffloadInfo | None = None

    @property
    def split(self) -> int | None:
        """The split point this input was sent at (None: it never left the device)."""
        return None if self.offload is None else self.offload.split

    @property
    def bytes_sent(self) -> int:
        return 0 if self.offload is None else self.offload.bytes_sent

    @property
    def rtt_ms(self) -> float:
        return 0.0 if self.offload is None else self.offload.rtt_ms

    @property
    def fallback(self) -> bool:
        """True when an offload was chosen but the device answered (server unavailable)."""
        return self.offload is not None and self.offload.fallback

    def __str__(self) -> str:
        what = self.name if self.name is not None else str(self.label)
        if self.offloaded:
            where = f"offloaded at stage {self.split}, {self.bytes_sent} B"
        elif self.fallback:
            where = f"exit {self.exit}, local fallback"
        else:
            where = f"exit {self.exit}"
        return f"{what} ({self.score:.2f}, {where}, {self.latency_ms:.3f} ms)"
