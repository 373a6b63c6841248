"""Multi-armed bandit algorithms over a small set of arms, in plain Python.

With a dozen arms, Python floats are faster than numpy (a numpy call costs about a
microsecond; these loops cost less than that in total). Every algorithm takes *side
observations*: one input can reveal the reward of several arms (see ``BanditPolicy``).
Rewards are expected in [0, 1].
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

from ._persist import StateError, count, finite

__all__ = ["ALGORITHMS", "Algorithm", "make_algorithm"]


class Algorithm:
    """Base: chooses an arm, takes rewards for one or more arms, saves and loads its state."""

    name = "base"

    def __init__(self, n_arms: int, seed: int | None = None) -> None:
        self.n = n_arms
        self.t = 0
        self.rng = random.Random(seed)

    def choose(self, limit: int | None = None) -> int:
        """The arm to play; with ``limit``, only among arms ``0..limit-1`` (the others are
        unavailable for now, e.g. offload arms while the server is unreachable)."""
        raise NotImplementedError

    def update(self, chosen: int, rewards: Sequence[tuple[int, float]]) -> None:
        """``rewards``: (arm, reward) for every arm whose reward this input revealed."""
        raise NotImplementedError

    def values(self) -> list[float]:
        """Current estimate of each arm's mean reward (nan when unseen)."""
        raise NotImplementedError

    def counts(self) -> list[float]:
        raise NotImplementedError

    @property
    def memory(self) -> float:
        """How many recent inputs the estimates reflect (inf: every input so far)."""
        return math.inf

    def state(self) -> dict[str, Any]:
        return {"t": self.t}

    def load(self, state: dict[str, Any]) -> None:
        """Restore a saved state; ``ValueError`` (nothing changed) if any value is invalid."""
        self.t = count(state["t"], "t")


class _Averages(Algorithm):
    """Arms summarised by (count, sum), optionally discounted by ``gamma`` every step.

    The discount is applied lazily: the true statistics are ``scale`` times the stored
    ones, each step multiplies ``scale`` by ``gamma`` and adds new rewards divided by it,
    so a step costs the same with 13 arms or 53 (no list is rebuilt). Means need no
    correction (the scale cancels); counts do.
    """

    def __init__(self, n_arms: int, seed: int | None = None, gamma: float = 1.0) -> None:
        super().__init__(n_arms, seed)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma = {gamma!r} must be in (0, 1]")
        self.gamma = gamma
        self.cnt = [0.0] * n_arms
        self.sum = [0.0] * n_arms
        self.scale = 1.0

    def update(self, chosen: int, rewards: Sequence[tuple[int, float]]) -> None:
        self.t += 1
        cnt, total = self.cnt, self.sum
        if self.gamma < 1.0:
            self.scale *= self.gamma
            if self.scale < 1e-100:  # fold the scale in before the stored sums overflow
                self._fold()
            inc = 1.0 / self.scale
            for arm, r in rewards:
                cnt[arm] += inc
                total[arm] += r * inc
        else:
            for arm, r in rewards:
                cnt[arm] += 1.0
                total[arm] += r

    def _fold(self) -> None:
        s = self.scale
        self.cnt[:] = [c * s for c in self.cnt]  # in place: callers hold the lists
        self.sum[:] = [x * s for x in self.sum]
        self.scale = 1.0

    def values(self) -> list[float]:
        return [s / c if c > 0 else math.nan for s, c in zip(self.sum, self.cnt)]

    def counts(self) -> list[float]:
        s = self.scale
        return [c * s for c in self.cnt]

    @property
    def memory(self) -> float:
        # A discount gamma weighs the last 1 / (1 - gamma) inputs as much as all before.
        return math.inf if self.gamma >= 1.0 else 1.0 / (1.0 - self.gamma)

    def state(self) -> dict[str, Any]:
        s = self.scale
        return {"t": self.t, "cnt": [c * s for c in self.cnt], "sum": [x * s for x in self.sum]}

    def load(self, state: dict[str, Any]) -> None:
        t = count(state["t"], "t")
        cnt, total = _averages(state, self.n)
        self.t, self.cnt, self.sum, self.scale = t, cnt, total, 1.0


class UCB1(_Averages):
    """Upper confidence bound: mean + c * sqrt(2 ln t / n)."""

    name = "ucb"

    def __init__(
        self, n_arms: int, seed: int | None = None, c: float = 0.25, gamma: float = 1.0
    ) -> None:
        super().__init__(n_arms, seed, gamma)
        self.c = c

    def _horizon(self) -> float:
        return sum(self.cnt) * self.scale if self.gamma < 1.0 else self.t + 1.0

    def choose(self, limit: int | None = None) -> int:
        log_t = 2.0 * math.log(max(2.0, self._horizon()))
        best, best_i = -math.inf, 0
        cnt, total, scale, c = self.cnt, self.sum, self.scale, self.c
        log_t /= scale  # sqrt(log_t / (stored * scale)) with the true count
        for i in range(self.n if limit is None else limit):
            n = cnt[i]  # stored: the true count over scale
            if n * scale < 0.5:
                return i
            v = total[i] / n + c * math.sqrt(log_t / n)
            if v > best:
                best, best_i = v, i
        return best_i


class DiscountedUCB(UCB1):
    """UCB on discounted statistics: old rewards fade by ``gamma`` per input."""

    name = "ducb"

    def __init__(
        self, n_arms: int, seed: int | None = None, c: float = 0.25, gamma: float = 0.998
    ) -> None:
        super().__init__(n_arms, seed, c=c, gamma=gamma)


class SlidingWindowUCB(UCB1):
    """UCB over the last ``window`` inputs only."""

    name = "swucb"

    def __init__(
        self, n_arms: int, seed: int | None = None, c: float = 0.25, window: int = 1000
    ) -> None:
        super().__init__(n_arms, seed, c=c)
        self.window = window
        self.hist: deque[tuple[int, tuple[tuple[int, float], ...]]] = deque()

    def _horizon(self) -> float:
        return min(self.t, self.window) + 1.0

    @property
    def memory(self) -> float:
        return float(self.window)

    def update(self, chosen: int, rewards: Sequence[tuple[int, float]]) -> None:
        self.t += 1
        obs = tuple(rewards)
        self.hist.append((self.t, obs))
        for arm, r in obs:
            self.cnt[arm] += 1.0
            self.sum[arm] += r
        while self.hist and self.hist[0][0] <= self.t - self.window:
            _, old = self.hist.popleft()
            for arm, r in old:
                self.cnt[arm] -= 1.0
                self.sum[arm] -= r

    def values(self) -> list[float]:
        return [s / c if c > 0.5 else math.nan for s, c in zip(self.sum, self.cnt)]

    def state(self) -> dict[str, Any]:
        return {"t": self.t, "hist": [[t, [list(o) for o in obs]] for t, obs in self.hist]}

    def load(self, state: dict[str, Any]) -> None:
        t_now = count(state["t"], "t")
        hist = state["hist"]
        if not isinstance(hist, list) or len(hist) > self.window:
            raise StateError(f"hist is not a list of at most {self.window} inputs")
        entries = []
        prev = -1
        for t, obs in hist:
            t = count(t, "hist t")
            if not prev < t <= t_now or not isinstance(obs, list) or len(obs) > self.n:
                raise StateError("hist holds an entry out of order or with too many arms")
            prev = t
            entries.append((t, [(_arm(a, self.n), finite(r, "reward", 0.0, 1.0)) for a, r in obs]))
        self.cnt, self.sum, self.hist = [0.0] * self.n, [0.0] * self.n, deque()
        for t, rewards in entries:
            self.t = t - 1
            self.update(0, rewards)
        self.t = t_now


class Thompson(_Averages):
    """Gaussian Thompson sampling: draw each arm's mean from N(mean, sigma^2 / (n + 1))."""

    name = "thompson"

    def __init__(
        self, n_arms: int, seed: int | None = None, sigma: float = 0.15, gamma: float = 1.0
    ) -> None:
        super().__init__(n_arms, seed, gamma)
        self.sigma = sigma

    def choose(self, limit: int | None = None) -> int:
        gauss = self.rng.gauss
        best, best_i = -math.inf, 0
        scale = self.scale
        for i in range(self.n if limit is None else limit):
            stored = self.cnt[i]
            n = stored * scale
            mean = self.sum[i] / stored if stored > 0 else 0.5
            v = gauss(mean, self.sigma / math.sqrt(n + 1.0))
            if v > best:
                best, best_i = v, i
        return best_i


class EXP3(Algorithm):
    """EXP3 for adversarial rewards; uses the chosen arm's reward only (importance-weighted)."""

    name = "exp3"

    def __init__(self, n_arms: int, seed: int | None = None, gamma: float = 0.05) -> None:
        super().__init__(n_arms, seed)
        self.gamma = gamma
        self.logw = [0.0] * n_arms
        self.cnt = [0.0] * n_arms
        self.sum = [0.0] * n_arms
        self._p = [1.0 / n_arms] * n_arms

    def _probs(self, limit: int | None = None) -> list[float]:
        k = self.n if limit is None else limit
        m = max(self.logw[:k])
        w = [math.exp(x - m) for x in self.logw[:k]]
        s = sum(w)
        g = self.gamma
        return [(1.0 - g) * x / s + g / k for x in w] + [0.0] * (self.n - k)

    def choose(self, limit: int | None = None) -> int:
        self._p = self._probs(limit)
        u, acc = self.rng.random(), 0.0
        for i, p in enumerate(self._p):
            acc += p
            if u < acc:
                return i
        return (self.n if limit is None else limit) - 1

    def update(self, chosen: int, rewards: Sequence[tuple[int, float]]) -> None:
        self.t += 1
        for arm, r in rewards:
            self.cnt[arm] += 1.0
            self.sum[arm] += r
            if arm == chosen:
                self.logw[arm] += self.gamma * (r / self._p[arm]) / self.n

    def values(self) -> list[float]:
        return [s / c if c > 0 else math.nan for s, c in zip(self.sum, self.cnt)]

    def counts(self) -> list[float]:
        return list(self.cnt)

    def state(self) -> dict[str, Any]:
        return {"t": self.t, "logw": list(self.logw), "cnt": list(self.cnt), "sum": list(self.sum)}

    def load(self, state: dict[str, Any]) -> None:
        t = count(state["t"], "t")
        logw = _floats(state["logw"], self.n, "logw", -1e12, 1e12)
        cnt, total = _averages(state, self.n)
        self.t, self.logw, self.cnt, self.sum = t, logw, cnt, total


def _floats(v: Any, n: int, what: str, lo: float, hi: float) -> list[float]:
    if not isinstance(v, list) or len(v) != n:
        raise StateError(f"{what} is not a list of {n} numbers (one per arm)")
    return [finite(x, what, lo, hi) for x in v]


def _averages(state: dict[str, Any], n: int) -> tuple[list[float], list[float]]:
    """Per-arm counts (>= 0) and reward sums (rewards are in [0, 1]: 0 <= sum <= count)."""
    cnt = _floats(state["cnt"], n, "cnt", 0.0, 1e15)
    total = _floats(state["sum"], n, "sum", 0.0, 1e15)
    if any(s > c * (1.0 + 1e-9) + 1e-9 for s, c in zip(total, cnt)):
        raise StateError("sum exceeds cnt for an arm (rewards are at most 1)")
    return cnt, total


def _arm(v: Any, n: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
        raise StateError(f"arm {v!r} is not one of 0..{n - 1}")
    return v


ALGORITHMS: dict[str, type[Algorithm]] = {
    a.name: a for a in (UCB1, DiscountedUCB, SlidingWindowUCB, Thompson, EXP3)
}


def make_algorithm(name: str, n_arms: int, seed: int | None = None, **kw: Any) -> Algorithm:
    """An algorithm by name: ucb, ducb, swucb, thompson or exp3."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown bandit algorithm {name!r}; choose from {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](n_arms, seed, **kw)
