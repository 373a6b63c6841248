"""The built-in exit policies: full, threshold, oracle, split, and the bandits.

Each implements the contract of :mod:`._policy`: ``select(ready)`` gives a
:class:`Decision` per input, ``observe(outcome)`` learns from what happened. The bandits
learn online, without labels, which threshold (and, with a server, which split point)
gives the best confidence for its cost; what they learn is saved to ``state_path``.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
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
            algo = self._algorithm(self.algo.n)
            algo.load(s["algo"])
        except (StateError, ValueError, KeyError, TypeError, IndexError) as exc:
            warnings.warn(
                f"edgekit: bandit state {p} is unreadable ({exc}); starting fresh",
                RuntimeWarning,
                stacklevel=4,
            )
            self._dirty = True  # the next save replaces the bad file
            return
        self.algo, self.lam = algo, lam


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


class SplitBanditPolicy(_Learning):
    """The bandit with a server: arms are (split point, threshold) pairs.

    Local arms (one per threshold in ``config.arms``) run everything here, stopping early
    as :class:`BanditPolicy` does. An offload arm ``(s, t)`` runs stages ``0..s-1`` here,
    stops at the first of their exits whose confidence reaches ``t``, and otherwise sends
    the input of stage ``s`` to the server (``s = 0`` sends the input itself, so it has a
    single arm). Its reward is the server's confidence minus ``lam`` times what the caller
    waited (local stages, round trip, and local completion after a failure), as a fraction
    of the full model's local latency: a slow link or a busy server lowers it.

    Side observations: every input updates every arm whose reward it determines, so the
    53 arms of a 4-stage package are learned about as fast as the 13 local ones. Exact
    ones: an input reveals every arm that would have stopped at an exit that was run here,
    and an offload at ``s`` every arm that would have offloaded at ``s`` (same bytes, same
    round trip). Estimated ones, for offload arms at other split points, whenever an
    input's last-exit confidence is known (it ran to the end here, or the server
    answered): the reward is that confidence minus the local stages before the split and
    the split's round trip, the median of the last (at least three) measured there. A
    round trip depends on the link and the server, not on the input, so a measurement
    speaks for every input while it is fresh: while its newest is within the last
    ``rtt_window`` inputs (default: as long as the algorithm remembers anything; 0: never
    estimate). A stale one is not used, and the arm then learns from its own offloads
    again (as the discounted and sliding-window algorithms explore it), which is what
    lets the choice follow a link that changes. Without estimates every offload arm would
    have to be played to be learned, and on a slow link each such exploration costs a
    round trip: that exploration is what made the bandit slower than its local arms alone.

    While the server is unavailable (``select(ready=False)``: the circuit breaker is
    open) only local arms are chosen.
    """

    name = "bandit"
    _offloads = True

    def __init__(self, config: BanditConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, kwargs)
        c = self.config
        self.thresholds = tuple(sorted(c.arms))
        self.split_thresholds = tuple(sorted(c.split_arms if c.split_arms else c.arms))
        self.pairs: tuple[tuple[int, float], ...] = ()
        if c.rtt_window is not None and c.rtt_window < 0:
            raise ValueError(f"rtt_window = {c.rtt_window!r} must be >= 0 (or None)")
        self.rtt_window: float = 0.0  # set by bind (the default depends on the algorithm)
        self._n = 0  # inputs seen
        self._links: list[deque[float]] = []  # per split: recent link costs (fractions)
        self._link_at: list[int] = []  # per split: input count of the newest
        self._link_med: list[float] = []  # per split: their median (-1: fewer than three)
        # Until bind, a placeholder over the local arms (the split arms need the exits).
        self.algo = self._algorithm(len(self.thresholds))

    def bind(
        self, n_exits: int, macs_fractions: Sequence[float], *, package: str | None = None
    ) -> None:
        Policy.bind(self, n_exits, macs_fractions, package=package)
        c = self.config
        splits = sorted(set(range(n_exits) if c.splits is None else c.splits))
        bad = [s for s in splits if not 0 <= s < n_exits]
        if bad:
            raise ValueError(
                f"split points {bad} are out of range; this package has stages "
                f"0..{n_exits - 1} (split S sends the input of stage S)"
            )
        pairs = [(n_exits, t) for t in self.thresholds]
        for s in splits:
            pairs += [(0, NEVER)] if s == 0 else [(s, t) for t in self.split_thresholds]
        self.pairs = tuple(pairs)
        self.arms = tuple(t for _, t in pairs)  # the threshold of each arm
        self._n_local = len(self.thresholds)
        self._all_t = sorted(set(self.thresholds) | set(self.split_thresholds))
        self._arm_st = [(s, self._all_t.index(t)) for s, t in pairs]
        self._decisions = [
            Decision((t,) * (n_exits - 1) + (NEVER,), None if s == n_exits else s) for s, t in pairs
        ]
        self._links = [deque(maxlen=8) for _ in range(n_exits)]
        self._link_at = [-(1 << 30)] * n_exits
        self._link_med = [-1.0] * n_exits
        self.algo = self._algorithm(len(pairs))
        w = c.rtt_window
        self.rtt_window = self.algo.memory if w is None else float(w)
        if c.state_path:
            self._load(Path(c.state_path))

    def select(self, ready: bool) -> Decision:
        self.chosen = i = self.algo.choose(None if ready else self._n_local)
        return self._decisions[i]

    def observe(self, outcome: Outcome) -> None:
        k, confs, costs, paid, ms, split, conf = outcome
        if split is None:
            self._observe(k, confs, costs, None)
        elif conf is not None:
            self._observe_offload(split, confs, costs, conf, paid)
        else:  # the offload failed: the device finished the input at exit k
            self._observe(k, confs, costs, (self.chosen, _reward(confs[k], paid, self.lam)))
        if self._budget is not None:
            self.adapt_budget(ms)

    def _first_exits(self, confs: Sequence[float], seen: int) -> list[int]:
        """For each threshold, the first exit among those run (``0..seen``, never the last
        one) whose confidence reaches it, or -1."""
        lim = min(seen, self.n_exits - 2)
        out = []
        k = 0
        for t in self._all_t:
            while k <= lim and confs[k] < t:
                k += 1
            out.append(k if k <= lim else -1)
        return out

    def _link_costs(self, upto: int) -> list[float]:
        """Per split point below ``upto``: the link cost to assume for an estimate (the
        median of the last few measured), or -1 when there is none to trust: fewer than
        three measured, or the newest older than ``rtt_window`` inputs."""
        out = []
        for s in range(upto):
            stale = self._n - self._link_at[s] > self.rtt_window
            out.append(-1.0 if stale else self._link_med[s])
        return out

    def _observe(
        self,
        seen: int,
        confs: Sequence[float],
        costs: Sequence[float],
        chosen: tuple[int, float] | None,
    ) -> None:
        """Every input run here up to exit ``seen`` (``chosen``: the chosen arm's own
        reward when it differs from what the exits say, after a failed offload)."""
        lam, n, last = self.lam, self.n_exits, self.n_exits - 1
        r_exit = [_reward(confs[j], costs[j], lam) for j in range(seen + 1)]
        first = self._first_exits(confs, seen)
        # Ran to the end: the offloads' answer is known; their round trips are estimated.
        r_est = self._estimates(confs[last], costs, n) if seen == last else None
        rewards = []
        for i, (s, ti) in enumerate(self._arm_st):
            j = first[ti]
            if 0 <= j < s:
                rewards.append((i, r_exit[j]))
            elif s == n:
                if seen == last:
                    rewards.append((i, r_exit[last]))
            elif r_est is not None and r_est[s] >= 0.0:
                rewards.append((i, r_est[s]))
        if chosen is not None:
            rewards = [r for r in rewards if r[0] != chosen[0]] + [chosen]
        self._learn(rewards)

    def _estimates(self, conf: float, costs: Sequence[float], upto: int) -> list[float]:
        """Estimated reward of offloading at each split below ``upto`` (-1: no estimate)."""
        if not self.rtt_window:
            return [-1.0] * upto
        out = []
        for s, link in enumerate(self._link_costs(upto)):
            local = costs[s - 1] if s else 0.0
            out.append(_reward(conf, local + link, self.lam) if link >= 0.0 else -1.0)
        return out

    def _observe_offload(
        self, split: int, confs: Sequence[float], costs: Sequence[float], conf: float, paid: float
    ) -> None:
        """The server answered an input sent at ``split``: ``confs`` hold exits
        ``0..split-1`` (run here), ``conf`` is the server's confidence (the last exit's)."""
        lam, n, last = self.lam, self.n_exits, self.n_exits - 1
        local = costs[split - 1] if split else 0.0
        q = self._links[split]
        q.append(max(0.0, paid - local))
        self._link_at[split] = self._n
        self._link_med[split] = sorted(q)[len(q) // 2] if len(q) >= 3 else -1.0
        r_exit = [_reward(confs[j], costs[j], lam) for j in range(split)]
        first = self._first_exits(confs, split - 1)
        r_off = _reward(conf, paid, lam)
        # Had everything run here, the last exit would have had the server's confidence.
        r_local = _reward(conf, costs[last], lam) if split == last else -1.0
        r_est = self._estimates(conf, costs, split)  # earlier split points: estimated
        rewards = []
        for i, (s, ti) in enumerate(self._arm_st):
            j = first[ti]
            if 0 <= j < s:
                rewards.append((i, r_exit[j]))
            elif s == split:
                rewards.append((i, r_off))
            elif s == n:
                if r_local >= 0.0:
                    rewards.append((i, r_local))
            elif s < split and r_est[s] >= 0.0:
                rewards.append((i, r_est[s]))
        self._learn(rewards)

    def _learn(self, rewards: list[tuple[int, float]]) -> None:
        self._n += 1
        self.algo.update(self.chosen, rewards)
        self._dirty = True

    def arm_values(self) -> dict[str, Any]:
        vals = self.algo.values()
        cnts = self.algo.counts()
        n = self.n_exits

        def key(i: int) -> dict[str, Any]:
            s, t = self.pairs[i]
            return {
                "split": "local" if s == n else s,
                "threshold": "never" if t == NEVER else t,
            }

        best = max(range(len(vals)), key=lambda i: -1 if math.isnan(vals[i]) else vals[i])
        return {
            "algorithm": self.algo.name,
            "lambda": self.lam,
            "arms": [
                {**key(i), "value": v, "count": c} for i, (v, c) in enumerate(zip(vals, cnts))
            ],
            "best": key(best),
        }

    def describe(self) -> str:
        return f"bandit:{self.algo.name}+offload"

    def _encode_arms(self) -> list[Any]:
        n = self.n_exits
        return [[None if s == n else s, None if t == NEVER else t] for s, t in self.pairs]


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
