"""The policy contract: what a policy declares, decides per input and is told afterwards.

The model asks :meth:`Policy.select` before each input and gets a :class:`Decision` (a
confidence threshold per exit, and optionally a stage whose input goes to a server);
after the input it calls :meth:`Policy.observe` once with an :class:`Outcome`. What a
policy needs from the model (its cost unit, every exit run, a server) it declares once,
in :attr:`Policy.needs`. A policy of your own subclasses :class:`Policy` and implements
``select`` and ``observe``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["NEVER", "Decision", "Needs", "Outcome", "Policy"]

NEVER = math.inf  # a threshold no confidence reaches: do not stop at this exit


class Needs(NamedTuple):
    """What a policy needs from the model, declared once.

    ``cost``: the unit of :attr:`Outcome.costs`: ``"latency"`` (measured, as a fraction
    of the full model's) or ``"macs"``. ``all_exits``: run every stage whatever the
    confidences (evaluation). ``offloads``: may return a split point (needs a server).
    ``confidences``: wants every exit's confidence even when all stages run (False lets
    the model answer with one call of the unsplit model when nothing can stop early).
    """

    cost: str = "latency"
    all_exits: bool = False
    offloads: bool = False
    confidences: bool = True


class Decision(NamedTuple):
    """Where to stop for one input.

    ``thresholds[k]``: stop at exit ``k`` when its confidence reaches this (the last exit
    always answers). ``split``: with a server, run stages ``0..split-1`` here (stopping
    early as above) and send the input of stage ``split`` to the server; None: all here.
    """

    thresholds: tuple[float, ...]
    split: int | None = None


class Outcome(NamedTuple):
    """What happened to one input.

    ``exit``: the deepest exit computed on this device (-1 when the input itself was
    sent). ``confidences[k]`` for ``k <= exit``; ``costs[k]`` for every exit: what
    reaching it costs, as a fraction of the full model (estimated past ``exit``).
    ``split``: where an offload was tried (None: it was not). ``server_confidence``: the
    server's answer (None: no offload, or it failed and the device finished the input).
    ``paid``: what the caller waited, as a fraction of the full model's local latency
    (network time included). ``latency_ms``: the same in milliseconds.

    The sequences are the model's own buffers, valid during ``observe``: copy what you keep.
    """

    exit: int
    confidences: Sequence[float]
    costs: Sequence[float]
    paid: float
    latency_ms: float
    split: int | None = None
    server_confidence: float | None = None


class Policy:
    """Base class of exit policies. Subclasses set ``name`` (and ``needs``) and implement
    :meth:`select` and :meth:`observe`; the rest has working defaults."""

    name = "policy"
    needs = Needs()

    def bind(
        self, n_exits: int, macs_fractions: Sequence[float], *, package: str | None = None
    ) -> None:
        """Called once by the model with the package's exits (``package``: the sha256 of
        its manifest, which a saved state must match). Overrides call ``super().bind``."""
        self.n_exits = n_exits
        self.macs_fractions = list(macs_fractions)
        self.package = package

    def select(self, ready: bool) -> Decision:
        """The decision for the next input. ``ready``: a server is configured and may be
        used now (its circuit breaker is closed)."""
        raise NotImplementedError

    def observe(self, outcome: Outcome) -> None:
        """What happened to the input of the last :meth:`select`."""

    def feedback(self, correct: bool, exit_taken: int) -> None:
        """A label arrived for an earlier prediction (used by policies that can use it)."""

    def arm_values(self) -> dict[str, Any]:
        """What the policy has learned, for ``EdgeModel.stats()`` (empty: nothing)."""
        return {}

    @property
    def persists(self) -> bool:
        """True when the policy keeps learned state on disk (``checkpoint`` returns work)."""
        return False

    def checkpoint(self) -> Callable[[], None] | None:
        """Copy the learned state (called under the model's lock) and return a function
        that writes the copy to disk, or None when nothing changed since the last one."""
        return None

    def save(self) -> None:
        """Persist learned state now."""
        write = self.checkpoint()
        if write is not None:
            write()

    def describe(self) -> str:
        return self.name
