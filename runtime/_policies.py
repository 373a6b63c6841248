"""The built-in exit policies: full, threshold, oracle, split, and the bandits.

Each implements the contract of :mod:`._policy`: ``select(ready)`` gives a
:class:`Decision` per input, ``observe(outcome)`` learns from what happened. The bandits
learn online, without labels, which threshold (and, with a server, which split point)
gives the best confidence for its cost; what they learn is saved to ``state_path``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._bandit import ALGORITHMS, Algorithm, make_algorithm
from ._persist import StateError, finite, read_state, write_state
from ._policy import NEVER, Decision, Needs, Outcome, Policy

__all__ = [
    "DEFAULT_ARMS",
    "BanditConfig",
    "BanditPolicy",
    "FullPolicy",
    "OraclePolicy",
    "SplitBanditPolicy",
    "SplitPolicy",
    "ThresholdPolicy",
    "parse_policy",
]

DEFAULT_ARMS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, NEVER)


class _Fixed(Policy):
    """A policy with one decision for every input."""

    def _decide(self, n_exits: int) -> Decision:
        raise NotImplementedError

    def bind(
        self, n_exits: int, macs_fractions: Sequence[float], *, package: str | None = None
    ) -> None:
        super().bind(n_exits, macs_fractions, package=package)
        self._decision = self._decide(n_exits)

    def select(self, ready: bool) -> Decision:
        return self._decision


class FullPolicy(_Fixed):
    """Always run to the last exit."""

    name = "full"
    needs = Needs(confidences=False)

    def _decide(self, n_exits: int) -> Decision:
        return Decision((NEVER,) * n_exits)


class ThresholdPolicy(_Fixed):
    """Stop at the first exit whose confidence reaches a fixed threshold (one per exit)."""

    name = "threshold"

    def __init__(self, threshold: float | Sequence[float] = 0.9) -> None:
        self.threshold = threshold

    def _decide(self, n_exits: int) -> Decision:
        th = self.threshold
        ths = [float(th)] * n_exits if isinstance(th, (int, float)) else [float(t) for t in th]
        if len(ths) == n_exits - 1:
            ths.append(NEVER)
        if len(ths) != n_exits:
            raise ValueError(f"{len(ths)} thresholds for {n_exits} exits")
        return Decision(tuple(ths))

    def describe(self) -> str:
        return f"threshold:{self.threshold}"


class OraclePolicy(_Fixed):
    """Evaluation only: runs every exit, then credits the earliest exit that agrees with
    the final one (the iso-accuracy oracle). Its cost is what that exit would have cost."""

    name = "oracle"
    needs = Needs(all_exits=True)

    def _decide(self, n_exits: int) -> Decision:
        return Decision((NEVER,) * n_exits)


class SplitPolicy(_Fixed):
    """A fixed split point (for benchmarks and fixed deployments): run stages
    ``0..split-1`` here, stopping early at the first of their exits whose confidence
    reaches ``threshold`` (never, by default), then send the input of stage ``split`` to
    the server. When the server cannot answer, the device finishes the input from where
    it stopped, with the same threshold.
    """

    name = "split"
    needs = Needs(offloads=True)

    def __init__(self, split: int, threshold: float = NEVER) -> None:
        if split < 0:
            raise ValueError(f"split point {split} is negative")
        self.at = int(split)
        self.threshold = float(threshold)

    def _decide(self, n_exits: int) -> Decision:
        if self.at >= n_exits:
            raise ValueError(
                f"split point {self.at} is past the last stage; this package has stages "
                f"0..{n_exits - 1} (split S sends the input of stage S)"
            )
        return Decision((self.threshold,) * (n_exits - 1) + (NEVER,), self.at)

    def describe(self) -> str:
        t = "" if self.threshold == NEVER else f":{self.threshold}"
        return f"split:{self.at}{t}"


STATE_VERSION = 2
MAX_LAMBDA = 1e6


def _check_lam(lam: float) -> None:
    if not 0.0 <= lam <= MAX_LAMBDA:  # also refuses NaN
        raise ValueError(f"lam = {lam!r} must be a number in [0, {MAX_LAMBDA:g}]")


def _reward(conf: float, cost: float, lam: float) -> float:
    """Label-free reward in [0, 1]: confidence minus ``lam`` times the cost paid (a
    fraction of the full local model; offloads over a slow link can cost more than 1)."""
    r = (conf - lam * cost + lam) / (1.0 + lam)
    return 0.0 if r < 0.0 else (1.0 if r > 1.0 else r)


@dataclass
class BanditConfig:
    """How the bandit learns.

    ``lam`` trades confidence for cost: reward = confidence - lam * cost, cost being the
    fraction of the full model's latency (or MACs) paid. ``budget_ms`` instead adapts
    ``lam`` so that the mean latency meets the budget.

    ``state_path``: where what was learned is kept. A loaded model saves it from a
    background thread every ``save_interval_s`` seconds (never inside ``predict``) and
    on ``close``, so a killed process loses at most that much learning.

    With a server, ``splits`` are the split points the bandit may offload at (default:
    every stage, 0..N-1), ``split_arms`` the thresholds of its offload arms (default:
    ``arms``) and ``rtt_window`` how recent (in inputs) a measured round trip must be to
    estimate the reward of offload arms not played (default None: as long as the
    algorithm remembers, i.e. always for ucb, thompson and exp3, ``1 / (1 - gamma)``
    inputs for ducb, ``window`` for swucb; 0: never estimate); see
    :class:`SplitBanditPolicy`.
    """

    algorithm: str = "ucb"
    arms: tuple[float, ...] = DEFAULT_ARMS
    lam: float = 0.15
    budget_ms: float | None = None
    cost: str = "latency"  # or "macs"
    state_path: str | None = None
    save_interval_s: float = 30.0
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)
    splits: tuple[int, ...] | None = None
    split_arms: tuple[float, ...] | None = None
    rtt_window: int | None = None


class _Learning(Policy):
    """What both bandits share: the config, lambda and its budget, the algorithm over
    ``n`` arms, labels as feedback, and the state on disk (tied to the package)."""

    _offloads = False

    def __init__(self, config: BanditConfig | None, kwargs: dict[str, Any]) -> None:
        self.config = config or BanditConfig(**kwargs)
        c = self.config
        if c.cost not in ("latency", "macs"):
            raise ValueError("cost must be 'latency' or 'macs'")
        if c.algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown bandit algorithm {c.algorithm!r}; choose from {sorted(ALGORITHMS)}"
            )
        _check_lam(c.lam)
        self.lam = c.lam
        self.chosen = 0
        self._dirty = False
        self._mean_ms = 0.0
        self._budget = c.budget_ms
        self.needs = Needs(cost=c.cost, offloads=self._offloads)
        self.package: str | None = None
        self.algo: Algorithm

    def _algorithm(self, n_arms: int) -> Algorithm:
        c = self.config
        return make_algorithm(c.algorithm, n_arms, c.seed, **c.options)

    def adapt_budget(self, latency_ms: float) -> None:
        """With a latency budget, move lambda toward meeting it (a Lagrangian step)."""
        b = self._budget
        if b is None:
            return
        self._mean_ms = 0.99 * self._mean_ms + 0.01 * latency_ms if self._mean_ms else latency_ms
        self.lam = max(0.0, min(5.0, self.lam + 0.002 * (self._mean_ms - b) / b))

    def feedback(self, correct: bool, exit_taken: int) -> None:
        # A label that says the early answer was wrong is a strong signal: penalise the arm.
        if not correct and exit_taken < self.n_exits - 1:
            self.algo.update(self.chosen, [(self.chosen, 0.0)])
            self._dirty = True

    def _encode_arms(self) -> list[Any]:
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "package": self.package,
            "algorithm": self.algo.name,
            "arms": self._encode_arms(),
            "lambda": self.lam,
            "algo": self.algo.state(),
        }

    @property
    def persists(self) -> bool:
        return bool(self.config.state_path)

    def checkpoint(self) -> Callable[[], None] | None:
        path = self.config.state_path
        if not path or not self._dirty:
            return None
        self._dirty = False
        state = self._state()
        return lambda: write_state(Path(path), state)

    def save(self) -> None:
        """Write the state now, changed or not (``checkpoint`` writes only changes)."""
        if self.config.state_path:
            write_state(Path(self.config.state_path), self._state())
            self._dirty = False

    def _load(self, p: Path) -> None:
        """Restore the state saved at ``p`` (none there: start fresh). One that is
        unreadable or was saved for another package, other arms or another algorithm is
        warned about and left to be replaced by the next save."""
        try:
            s = read_state(p)
            if s is None:
                return
            if s.get("version") != STATE_VERSION:
                raise StateError(f"it has version {s.get('version')!r}, not {STATE_VERSION}")
            if s.get("package") != self.package:
                raise StateError("it belongs to another package (its manifest sha256 differs)")
            if s.get("algorithm") != self.algo.name or s.get("arms") != self._encode_arms():
                raise StateError("it was saved for other arms or another algorithm")
            lam = finite(s.get("lambda", self.lam), "lambda", 0.0, MAX_LAMBDA)
            install = self._restore(s["algo"])
        except (StateError, ValueError, KeyError, TypeError, IndexError) as exc:
            warnings.warn(
                f"edgekit: bandit state {p} is unreadable ({exc}); starting fresh",
                RuntimeWarning,
                stacklevel=4,
            )
            self._dirty = True  # the next save replaces the bad file
            return
        install(lam)

    def _restore(self, saved: Any) -> Callable[[float], None]:
        """Rebuild the algorithm(s) from their saved state (raising, nothing changed, if
        it is invalid); return what installs them with lambda."""
        algo = self._algorithm(self.algo.n)
        algo.load(saved)

        def install(lam: float) -> None:
            self.algo, self.lam = algo, lam

        return install


class BanditPolicy(_Learning):
    """Learns online, without labels, which threshold gives the best confidence for cost.

    Arms are thresholds. Running deeper reveals what every lower threshold would have
    done on this input, so each input updates all the arms whose outcome it determines
    (side observations). The state is saved atomically to ``state_path`` and reloaded,
    so learning survives restarts.
    """

    name = "bandit"

    def __init__(self, config: BanditConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, kwargs)
        self.arms = tuple(sorted(self.config.arms))
        self.algo = self._algorithm(len(self.arms))
        self._decisions: list[Decision] = []

    def bind(
        self, n_exits: int, macs_fractions: Sequence[float], *, package: str | None = None
    ) -> None:
        super().bind(n_exits, macs_fractions, package=package)
        self._decisions = [Decision((a,) * (n_exits - 1) + (NEVER,)) for a in self.arms]
        if self.config.state_path:
            self._load(Path(self.config.state_path))

    def select(self, ready: bool) -> Decision:
        self.chosen = i = self.algo.choose()
        return self._decisions[i]

    def observe(self, outcome: Outcome) -> None:
        exit_taken, confs, costs = outcome[0], outcome[1], outcome[2]
        last = self.n_exits - 1
        lam = self.lam
        scale = 1.0 / (1.0 + lam)
        # The reward of stopping at each exit seen, then of each arm that would have.
        r = [(confs[j] - lam * costs[j] + lam) * scale for j in range(exit_taken + 1)]
        rewards = []
        # Arms are sorted, and the exit a threshold takes never moves earlier as the
        # threshold grows, so one pointer walks the exits for all arms.
        k = 0
        for i, a in enumerate(self.arms):
            while k < last and k <= exit_taken and confs[k] < a:
                k += 1
            if k > exit_taken:
                break  # this and higher thresholds would have gone deeper than was seen
            rewards.append((i, r[k]))
        self.algo.update(self.chosen, rewards)
        self._dirty = True
        if self._budget is not None:
            self.adapt_budget(outcome[4])

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

    def _encode_arms(self) -> list[Any]:
        return [a if a != NEVER else None for a in self.arms]


def parse_policy(spec: str | Policy, *, offload: bool = False, **kwargs: Any) -> Policy:
    """``"full"`` (or ``"local"``), ``"oracle"``, ``"threshold:0.9"`` (or
    ``"threshold:0.8,0.9,0.95"``, or ``"local:0.9"``), ``"bandit"`` or ``"bandit:ALGO"``
    (ucb, thompson, ducb, swucb, exp3).

    With ``offload`` (a server is configured), ``bandit`` learns over (split point,
    threshold) pairs (:class:`SplitBanditPolicy`), and ``"split:S"`` (or ``"split:S:T"``)
    always offloads at stage ``S`` (stopping early at threshold ``T`` before it)."""
    if isinstance(spec, Policy):
        return spec
    name, _, arg = spec.partition(":")
    if name in ("full", "local") and not arg:
        return FullPolicy()
    if name == "oracle":
        return OraclePolicy()
    if name in ("threshold", "local"):
        vals = [float(v) for v in arg.split(",")] if arg else [0.9]
        return ThresholdPolicy(vals[0] if len(vals) == 1 else vals)
    if name == "bandit":
        algo = arg or "ucb"
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown bandit algorithm {algo!r}; choose from {sorted(ALGORITHMS)}")
        cfg = BanditConfig(algorithm=algo, **kwargs)
        return SplitBanditPolicy(cfg) if offload else BanditPolicy(cfg)
    if name == "split":
        if not offload:
            raise ValueError(
                f"policy {spec!r} sends inputs to a server; pass offload='http://HOST:PORT'"
            )
        at, _, th = arg.partition(":")
        try:
            return SplitPolicy(int(at), float(th) if th else NEVER)
        except ValueError:
            raise ValueError(
                f"bad split policy {spec!r}; use split:S or split:S:T (S a stage index, "
                "T a confidence threshold)"
            ) from None
    raise ValueError(
        f"unknown policy {spec!r}; use full, threshold:T, bandit[:ALGO], oracle, "
        "or with a server split:S[:T]"
    )


# The bandit with a server builds on the classes above (its own module, a small one).
from ._split_bandit import SplitBanditPolicy  # noqa: E402
