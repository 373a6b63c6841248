"""Exit policies: where to stop, per input.

A policy gives, before each input, a threshold per exit (``select``); the model stops at
the first exit whose confidence reaches it. After the input it is told what happened
(``observe``): the exit taken, the confidences seen and the cost of each exit so far.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._bandit import ALGORITHMS, Algorithm, make_algorithm

__all__ = [
    "DEFAULT_ARMS",
    "BanditPolicy",
    "FullPolicy",
    "OraclePolicy",
    "Policy",
    "ThresholdPolicy",
    "parse_policy",
]

NEVER = math.inf
DEFAULT_ARMS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, NEVER)


class Policy:
    """Base class. Subclasses set ``name`` and override ``select`` (and ``observe``)."""

    name = "policy"
    needs_all_exits = False  # run every stage whatever the confidences (oracle)

    def bind(self, n_exits: int, macs_fractions: Sequence[float]) -> None:
        """Called once by the model with the package's exits."""
        self.n_exits = n_exits
        self.macs_fractions = list(macs_fractions)

    def select(self) -> Sequence[float]:
        raise NotImplementedError

    def observe(self, exit_taken: int, confs: Sequence[float], costs: Sequence[float]) -> None:
        """``confs[k]`` and ``costs[k]`` (fraction of the full model) for exits 0..exit_taken."""

    def feedback(self, correct: bool, exit_taken: int) -> None:
        """A label arrived for an earlier prediction (used by policies that can use it)."""

    def arm_values(self) -> dict[str, Any]:
        return {}

    def save(self) -> None:
        """Persist learned state (bandits)."""

    def describe(self) -> str:
        return self.name


class FullPolicy(Policy):
    """Always run to the last exit."""

    name = "full"

    def bind(self, n_exits: int, macs_fractions: Sequence[float]) -> None:
        super().bind(n_exits, macs_fractions)
        self._th = tuple([NEVER] * n_exits)

    def select(self) -> Sequence[float]:
        return self._th


class ThresholdPolicy(Policy):
    """Stop at the first exit whose confidence reaches a fixed threshold (one per exit)."""

    name = "threshold"

    def __init__(self, threshold: float | Sequence[float] = 0.9) -> None:
        self.threshold = threshold

    def bind(self, n_exits: int, macs_fractions: Sequence[float]) -> None:
        super().bind(n_exits, macs_fractions)
        th = self.threshold
        ths = [float(th)] * n_exits if isinstance(th, (int, float)) else [float(t) for t in th]
        if len(ths) == n_exits - 1:
            ths.append(NEVER)
        if len(ths) != n_exits:
            raise ValueError(f"{len(ths)} thresholds for {n_exits} exits")
        self._th = tuple(ths)

    def select(self) -> Sequence[float]:
        return self._th

    def describe(self) -> str:
        return f"threshold:{self.threshold}"


class OraclePolicy(Policy):
    """Evaluation only: runs every exit, then credits the earliest exit that agrees with
    the final one (the iso-accuracy oracle). Its cost is what that exit would have cost."""

    name = "oracle"
    needs_all_exits = True

    def bind(self, n_exits: int, macs_fractions: Sequence[float]) -> None:
        super().bind(n_exits, macs_fractions)
        self._th = tuple([NEVER] * n_exits)

    def select(self) -> Sequence[float]:
        return self._th


@dataclass
class BanditConfig:
    """How the bandit learns.

    ``lam`` trades confidence for cost: reward = confidence - lam * cost, cost being the
    fraction of the full model's latency (or MACs) paid. ``budget_ms`` instead adapts
    ``lam`` so that the mean latency meets the budget.
    """

    algorithm: str = "ucb"
    arms: tuple[float, ...] = DEFAULT_ARMS
    lam: float = 0.15
    budget_ms: float | None = None
    cost: str = "latency"  # or "macs"
    state_path: str | None = None
    save_every: int = 500
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)


class BanditPolicy(Policy):
    """Learns online, without labels, which threshold gives the best confidence for cost.

    Arms are thresholds. Running deeper reveals what every lower threshold would have
    done on this input, so each input updates all the arms whose outcome it determines
    (side observations). The state is saved atomically to ``state_path`` and reloaded,
    so learning survives restarts.
    """

    name = "bandit"

    def __init__(self, config: BanditConfig | None = None, **kwargs: Any) -> None:
        self.config = config or BanditConfig(**kwargs)
        c = self.config
        if c.cost not in ("latency", "macs"):
            raise ValueError("cost must be 'latency' or 'macs'")
        self.arms = tuple(sorted(c.arms))
        self.algo: Algorithm = make_algorithm(c.algorithm, len(self.arms), c.seed, **c.options)
        self.lam = c.lam
        self.chosen = 0
        self.history: list[int] = []
        self._since_save = 0
        self._ths: list[tuple[float, ...]] = []
        self._mean_ms = 0.0
        if c.state_path:
            self._load(Path(c.state_path))

    def bind(self, n_exits: int, macs_fractions: Sequence[float]) -> None:
        super().bind(n_exits, macs_fractions)
        self._ths = [tuple([a] * (n_exits - 1) + [NEVER]) for a in self.arms]

    def select(self) -> Sequence[float]:
        self.chosen = self.algo.choose()
        return self._ths[self.chosen]

    def observe(self, exit_taken: int, confs: Sequence[float], costs: Sequence[float]) -> None:
        last = self.n_exits - 1
        lam = self.lam
        scale = 1.0 + lam
        rewards = []
        # Arms are sorted, and the exit a threshold takes never moves earlier as the
        # threshold grows, so one pointer walks the exits for all arms.
        k = 0
        for i, a in enumerate(self.arms):
            while k < last and k <= exit_taken and confs[k] < a:
                k += 1
            if k > exit_taken:
                break  # this and higher thresholds would have gone deeper than was seen
            rewards.append((i, (confs[k] - lam * costs[k] + lam) / scale))
        self.algo.update(self.chosen, rewards)
        self.history.append(self.chosen)
        if self.config.save_every and self.config.state_path:
            self._since_save += 1
            if self._since_save >= self.config.save_every:
                self.save()

    def adapt_budget(self, latency_ms: float) -> None:
        """With a latency budget, move lambda toward meeting it (a Lagrangian step)."""
        b = self.config.budget_ms
        if b is None:
            return
        self._mean_ms = 0.99 * self._mean_ms + 0.01 * latency_ms if self._mean_ms else latency_ms
        self.lam = max(0.0, min(5.0, self.lam + 0.002 * (self._mean_ms - b) / b))

    def feedback(self, correct: bool, exit_taken: int) -> None:
        # A label that says the early answer was wrong is a strong signal: penalise the arm.
        if not correct and exit_taken < self.n_exits - 1:
            self.algo.update(self.chosen, [(self.chosen, 0.0)])

    def arm_values(self) -> dict[str, Any]:
        vals = self.algo.values()
        cnts = self.algo.counts()
        return {
            "algorithm": self.algo.name,
            "lambda": self.lam,
            "arms": [
                {"threshold": a if a != NEVER else "never", "value": v, "count": n}
                for a, v, n in zip(self.arms, vals, cnts)
            ],
            "best": self.arms[
                max(range(len(vals)), key=lambda i: -1 if math.isnan(vals[i]) else vals[i])
            ],
        }

    def describe(self) -> str:
        return f"bandit:{self.algo.name}"

    # -- persistence ----------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "algorithm": self.algo.name,
            "arms": [a if a != NEVER else None for a in self.arms],
            "lambda": self.lam,
            "algo": self.algo.state(),
        }

    def save(self) -> None:
        path = self.config.state_path
        if not path:
            return
        self._since_save = 0
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self._state(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def _load(self, p: Path) -> None:
        if not p.exists():
            return
        try:
            s = json.loads(p.read_text())
            arms = tuple(NEVER if a is None else float(a) for a in s["arms"])
            if s["algorithm"] != self.algo.name or arms != self.arms:
                raise ValueError("it was saved for other arms or another algorithm")
            self.algo.load(s["algo"])
            self.lam = float(s.get("lambda", self.lam))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(
                f"edgekit: bandit state {p} is unreadable ({exc}); starting fresh",
                RuntimeWarning,
                stacklevel=3,
            )
            self.algo = make_algorithm(
                self.config.algorithm, len(self.arms), self.config.seed, **self.config.options
            )


def parse_policy(spec: str | Policy, **kwargs: Any) -> Policy:
    """``"full"``, ``"oracle"``, ``"threshold:0.9"`` (or ``"threshold:0.8,0.9,0.95"``),
    ``"bandit"`` or ``"bandit:ALGO"`` (ucb, thompson, ducb, swucb, exp3)."""
    if isinstance(spec, Policy):
        return spec
    name, _, arg = spec.partition(":")
    if name == "full":
        return FullPolicy()
    if name == "oracle":
        return OraclePolicy()
    if name == "threshold":
        vals = [float(v) for v in arg.split(",")] if arg else [0.9]
        return ThresholdPolicy(vals[0] if len(vals) == 1 else vals)
    if name == "bandit":
        algo = arg or "ucb"
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown bandit algorithm {algo!r}; choose from {sorted(ALGORITHMS)}")
        return BanditPolicy(BanditConfig(algorithm=algo, **kwargs))
    raise ValueError(f"unknown policy {spec!r}; use full, threshold:T, bandit[:ALGO] or oracle")
