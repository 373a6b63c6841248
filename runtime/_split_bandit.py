"""The bandit with a server, chosen hierarchically: first where (here, or which split), then
the threshold, the local level being the local-only :class:`BanditPolicy` itself."""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._bandit import ALGORITHMS, Algorithm, make_algorithm
from ._persist import StateError
from ._policies import STATE_VERSION, BanditConfig, BanditPolicy, _Learning, _reward
from ._policy import NEVER, Decision, Outcome, Policy

__all__ = ["SplitBanditPolicy"]

# Round trips measured at a split before they estimate its reward on other inputs. One is
# enough (exploring a split again to get more costs a round trip each time); the first
# answer of all is not counted, as it also opened the connection (a cold start).
_MIN_LINKS = 1
# Estimated epochs after which a split place that only its measured round trips keep
# below the best place is played once more (a probe), doubling after each probe that
# did not beat the best (see SplitBanditPolicy, "Probes").
_PROBE_EPOCHS = 8
# Round trips measured at a split before a slow median alone no longer asks for probes
# (one cold answer, e.g. the server's first inference at that split, is then outvoted).
_SURE_LINKS = 3


class SplitBanditPolicy(_Learning):
    """The bandit with a server, in two levels.

    The top level is a bandit over *places*: all here, or offload at split point ``s``
    (each of ``config.splits``, default every stage; ``s`` sends the input of stage ``s``,
    so ``s = 0`` sends the input itself). Below it each place has its own bandit over
    thresholds: here, the local-only :class:`BanditPolicy` itself (arms ``config.arms``);
    at split ``s``, one that stops at the first exit before ``s`` whose confidence reaches
    its threshold and otherwise offloads (arms ``config.split_arms``, default ``arms``).

    The top level decides once per epoch and learns once per epoch, from sums kept per
    exit. An epoch is ``epoch`` inputs (8) while the top level plays its best place so far,
    one input while it explores, and an offload epoch ends at the first input that did
    worse than the top level rates staying here. So when offloading does not pay, an input
    costs what it costs the local-only bandit plus a few additions, and exploring a slow
    link costs one round trip. An offload's reward is the server's confidence minus
    ``lam`` times what the caller waited (local stages, round trip, and local completion
    after a failure), as a fraction of the full model's local latency: a slow link or a
    busy server lowers it. A place's level learns only from the inputs sent its way (side
    observations within it: every arm the input's outcome determines). The top level's
    memory (a discount or a window) is the configured one, converted from inputs to epochs.

    Estimates: an epoch here also rates every split point it has a fresh round trip for,
    on the same inputs: the input's rewards at exits before the split (the local level's
    thresholds), else its confidence where it stopped (at the last exit: the server's
    answer; earlier, a lower bound of it) minus the stages before the split and the
    split's round trip, the median of the last (up to eight) measured there. A round
    trip depends on the link and the server, not on the input, so a measurement speaks for
    every input while it is fresh: while its newest is within the last ``rtt_window``
    inputs (default: as long as the algorithm remembers; 0: never estimate). A stale one
    is not used, and the place then learns from its own offloads again (as the discounted
    and sliding-window algorithms explore it), which lets the choice follow a link that
    changes. So offloads are not explored a round trip at a time.

    Probes: estimates re-use the last measured round trips, so a split that a slow
    spell of the link (or one cold answer) rated low would be rated low from then on,
    never measured again. When a split place's estimate is below the best place's value
    but would beat it at the fastest round trip ever measured there, or fewer than 3
    round trips were measured there, and that has held for 8 estimated epochs, the
    place is played once (one input). A probe that does not beat the best
    doubles the wait before the next one (a link that stays slow costs a round trip
    every 8, 16, 32, ... epochs); one that does resets it.

    While the server is unavailable (``select(ready=False)``: the circuit breaker is
    open) only the local level is asked, and the top level does not learn.
    """

    name = "bandit"
    _offloads = True
    epoch = 8  # inputs per decision of the top level

    def __init__(self, config: BanditConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, kwargs)
        c = self.config
        if c.rtt_window is not None and c.rtt_window < 0:
            raise ValueError(f"rtt_window = {c.rtt_window!r} must be >= 0 (or None)")
        self.thresholds = tuple(sorted(c.arms))
        self.split_thresholds = tuple(sorted(c.split_arms if c.split_arms else c.arms))
        # The local level: the local-only bandit itself (this policy saves its state).
        self.local = BanditPolicy(replace(c, state_path=None, budget_ms=None))
        self.splits: tuple[int, ...] = ()
        self.pairs: tuple[tuple[int, float], ...] = ()  # every (split, threshold); n: here
        self.rtt_window: float = 0.0  # set by bind (the default depends on the algorithm)
        self.place = 0  # the place of the current epoch: 0 here, p >= 1 split splits[p - 1]
        self.top: Algorithm = self._algorithm(1)  # placeholder until bind
        self.algo = self.top
        self._n = 0  # inputs seen

    # -- set-up ---------------------------------------------------------------------------

    def _top_algorithm(self, n_places: int) -> Algorithm:
        """The top level's algorithm: the configured one, its memory (a discount or a
        window, counted in inputs) converted to epochs."""
        c, e = self.config, self.epoch
        opts = dict(c.options)
        params = inspect.signature(ALGORITHMS[c.algorithm]).parameters
        if c.algorithm != "exp3" and "gamma" in params:  # exp3's gamma is its exploration
            opts["gamma"] = float(opts.get("gamma", params["gamma"].default)) ** e
        if "window" in params:
            opts["window"] = max(
                1, math.ceil(int(opts.get("window", params["window"].default)) / e)
            )
        return make_algorithm(c.algorithm, n_places, c.seed, **opts)

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
        if not isinstance(self.epoch, int) or self.epoch < 1:
            raise ValueError(f"epoch = {self.epoch!r} must be an integer >= 1")
        self.splits = tuple(splits)
        self.local.bind(n_exits, macs_fractions, package=package)
        self.local.lam = self.lam
        # Per place p: its split point (n_exits: here), thresholds, level, decisions.
        self._at = [n_exits, *splits]
        self._ths: list[tuple[float, ...]] = [self.thresholds] + [
            (NEVER,) if s == 0 else self.split_thresholds for s in splits
        ]
        self._levels: list[Algorithm] = [self.local.algo] + [
            self._algorithm(len(t)) for t in self._ths[1:]
        ]
        rest = (NEVER,)
        self._decisions: list[list[Decision]] = [[]] + [
            [Decision((t,) * (n_exits - 1) + rest, s) for t in ths]
            for s, ths in zip(splits, self._ths[1:])
        ]
        self.pairs = tuple((s, t) for s, ths in zip(self._at, self._ths) for t in ths)
        self.top = self.algo = self._top_algorithm(1 + len(splits))
        self._links: list[deque[float]] = [deque(maxlen=8) for _ in range(n_exits)]
        self._link_at = [-(1 << 60)] * n_exits  # per split: input count of the newest
        self._link_med = [-1.0] * n_exits  # per split: their median (-1: too few)
        self._link_min = [math.inf] * n_exits  # per split: the fastest ever measured
        n_places = 1 + len(splits)
        self._stale = [0] * n_places  # per place: epochs only a slow median held it back
        self._probe_in = [_PROBE_EPOCHS] * n_places  # per place: epochs before a probe
        self._probe = 0  # the place to play at the next epoch (0: none)
        self._probing = False  # the current epoch is a probe
        # The epoch: how many inputs are left, and its sums. Here: per exit where inputs
        # stopped, their count, reward sum (unscaled) and confidence sum; at a split: the
        # played place's count and reward sum.
        self._left = 0
        self._cnt = [0] * n_exits
        self._rsum = [0.0] * n_exits
        self._csum = [0.0] * n_exits
        self._off_n = 0
        self._off_r = 0.0
        self._warm = False  # a round trip was answered already (the connection is open)
        self._sub = 0  # the arm the offload place's level chose for this input
        self._asked = False  # the last select was the top level's (the server was ready)
        self._rw: list[tuple[int, float]] = []
        self._buf = [0.0] * n_exits  # confidences with the server's as the last exit's
        w = c.rtt_window  # default: the memory of the levels, in inputs
        self.rtt_window = self.local.algo.memory if w is None else float(w)
        if c.state_path:
            self._load(Path(c.state_path))

    # -- per input ------------------------------------------------------------------------

    def select(self, ready: bool) -> Decision:
        if not ready:  # the breaker is open: the local level alone, outside any epoch
            self._asked = False
            return self.local.select(False)
        self._asked = True
        if self._left:
            self._left -= 1
            p = self.place
        elif self._probe:  # a probe: one input at a split a slow median holds back
            p = self.place = self._probe
            self._probe = self._left = self._stale[p] = 0
            self._probing = True
            self._reset()
        else:  # a new epoch: as long as the top level exploits, one input to explore
            p = self.place = self.top.choose()
            self._left = self.epoch - 1 if p == _argmax(self.top.values()) else 0
            self._stale[p] = 0
            self._reset()
        if p == 0:
            return self.local.select(True)
        level = self._levels[p]
        i = self._sub = level.choose() if level.n > 1 else 0
        return self._decisions[p][i]

    def observe(self, outcome: Outcome) -> None:
        self._n += 1
        if self._asked and not self.place:  # here, in an epoch: the common case, O(1) more
            self.local.observe(outcome)
            k, confs, costs = outcome[0], outcome[1], outcome[2]
            c = confs[k]
            self._cnt[k] += 1
            self._rsum[k] += c - self.lam * costs[k]
            self._csum[k] += c
            if not self._left:
                self._end_epoch(costs)
        else:
            self._observe_other(outcome)
        self._dirty = True
        if self._budget is not None:
            self.adapt_budget(outcome[4])
            self.local.lam = self.lam

    def _observe_other(self, outcome: Outcome) -> None:
        """An input sent towards a split (offloaded, stopped early, or fallen back), or
        one run here while the breaker was open."""
        k, confs, costs, paid, ms, split, conf = outcome
        loc = self.local
        last = self.n_exits - 1
        # The local level learns from every exit that ran here, as the local-only bandit
        # does; its chosen arm only when it was played.
        if self._asked:
            loc.chosen = -1
        if split is not None and conf is not None and split == last:
            buf = self._buf  # the local model's last exit would have had its confidence
            for j in range(last):
                buf[j] = confs[j]
            buf[last] = conf
            loc.observe(Outcome(last, buf, costs, costs[last], ms))
        else:
            loc.observe(outcome)
        if self._asked:
            self._observe_place(self.place, k, confs, costs, paid, split, conf)
            if not self._left:
                self._end_epoch(costs)

    def _observe_place(
        self,
        p: int,
        k: int,
        confs: Sequence[float],
        costs: Sequence[float],
        paid: float,
        split: int | None,
        conf: float | None,
    ) -> None:
        """Place ``p`` (an offload at ``s``) was played: its level's arms that this input
        reveals, the place's reward, and the round trip."""
        s, lam, ths = self._at[p], self.lam, self._ths[p]
        seen = k if split is None or conf is None else s - 1  # exits that ran here
        if split is None:  # stopped early, at exit k before the split
            r_in = _reward(confs[k], costs[k], lam)
        elif conf is not None:  # the server answered
            if self._warm:  # the first answer also opened the connection: not the link's
                local = costs[s - 1] if s else 0.0
                q = self._links[s]
                x = max(0.0, paid - local)
                q.append(x)
                if x < self._link_min[s]:
                    self._link_min[s] = x
                self._link_at[s] = self._n
                self._link_med[s] = sorted(q)[len(q) // 2] if len(q) >= _MIN_LINKS else -1.0
            self._warm = True
            r_in = _reward(conf, paid, lam)
        else:  # the offload failed: the device finished at exit k
            r_in = _reward(confs[k], paid, lam)
        self._off_n += 1
        self._off_r += r_in
        if self._probing:  # beat the best place: probe again soon; else back off
            self._probing = False
            beat = r_in >= _best(self.top.values())
            self._probe_in[p] = _PROBE_EPOCHS if beat else min(self._probe_in[p] * 2, 1 << 20)
        if self._left and r_in < self.top.values()[0]:
            self._left = 0  # did worse than staying here: the top level reconsiders now
        r_off = r_in if split is not None and conf is not None else -1.0
        rw = self._rw
        rw.clear()
        lim = min(seen, s - 1)  # exits before the split that ran here
        j = 0
        for i, t in enumerate(ths):
            while j <= lim and confs[j] < t:
                j += 1
            if j <= lim:
                rw.append((i, _reward(confs[j], costs[j], lam)))
            elif seen < s - 1:
                break  # stopped earlier than this arm would have: unknown from here on
            elif r_off >= 0.0:  # reached the split: the same answer and round trip
                rw.append((i, r_off))
            elif split is not None and i == self._sub:  # after a failure: what it paid
                rw.append((i, r_in))
        self._levels[p].update(self._sub, rw)

    def _end_epoch(self, costs: Sequence[float]) -> None:
        """The top level learns the epoch's mean reward of each place it can rate."""
        lam = self.lam
        sc = 1.0 / (1.0 + lam)
        rw = self._rw
        rw.clear()
        p = self.place
        if p:
            if self._off_n:
                rw.append((p, self._off_r / self._off_n))
        else:
            total = sum(self._cnt)
            if total:
                rw.append((0, _clip((sum(self._rsum) + lam * total) * sc / total)))
                if self.rtt_window > 0.0:
                    self._estimate(costs, total, _best(self.top.values()))
        self._reset()
        self.top.update(p, rw)

    def _reset(self) -> None:
        cnt, rsum, csum = self._cnt, self._rsum, self._csum
        for j in range(len(cnt)):
            cnt[j] = 0
            rsum[j] = csum[j] = 0.0
        self._off_n, self._off_r = 0, 0.0

    def _estimate(self, costs: Sequence[float], total: int, best: float) -> None:
        """Rate each split point with a fresh round trip on this epoch's inputs here;
        ask for a probe where only the median round trip keeps it below ``best``."""
        lam = self.lam
        sc = 1.0 / (1.0 + lam)
        cnt, rsum, csum, rw = self._cnt, self._rsum, self._csum, self._rw
        n, window = self._n, self.rtt_window
        before_n, before_r = 0, 0.0  # inputs that stopped before the split, their rewards
        after_c = sum(csum)  # the others' confidences
        prev = 0
        for p, s in enumerate(self._at):
            if p == 0:
                continue
            while prev < s:  # exits 0..s-1 move to "before"
                before_n += cnt[prev]
                before_r += rsum[prev]
                after_c -= csum[prev]
                prev += 1
            link = self._link_med[s]
            if link < 0.0 or n - self._link_at[s] > window:
                continue
            here = costs[s - 1] if s else 0.0
            after_n = total - before_n
            known = before_r + lam * before_n + after_c + lam * after_n
            r = _clip((known - lam * (here + link) * after_n) * sc / total)
            rw.append((p, r))
            unsure = len(self._links[s]) < _SURE_LINKS
            if r < best and (
                unsure or (known - lam * (here + self._link_min[s]) * after_n) * sc > best * total
            ):
                self._stale[p] += 1
                if self._stale[p] >= self._probe_in[p] and not self._probe:
                    self._probe = p

    def feedback(self, correct: bool, exit_taken: int) -> None:
        # A label that says the early answer was wrong: penalise the arm that gave it.
        if correct or exit_taken >= self.n_exits - 1:
            return
        if self.place == 0 or not self._asked:
            i = self.local.chosen
            if i >= 0:
                self.local.algo.update(i, [(i, 0.0)])
        else:
            self._levels[self.place].update(self._sub, [(self._sub, 0.0)])
        self._dirty = True

    # -- reporting and persistence --------------------------------------------------------

    def _name(self, g: int) -> int | str:
        return "local" if g == 0 else self._at[g]

    def arm_values(self) -> dict[str, Any]:
        arms = []
        best_t: list[Any] = []
        for g, ths in enumerate(self._ths):
            level = self._levels[g] if g else self.local.algo
            vals = level.values()
            for t, v, c in zip(ths, vals, level.counts()):
                arms.append(
                    {
                        "split": self._name(g),
                        "threshold": "never" if t == NEVER else t,
                        "value": v,
                        "count": c,
                    }
                )
            t = ths[_argmax(vals)]
            best_t.append("never" if t == NEVER else t)
        tv, tc = self.top.values(), self.top.counts()
        places = [
            {"split": self._name(g), "threshold": best_t[g], "value": v, "count": c}
            for g, (v, c) in enumerate(zip(tv, tc))
        ]
        best = _argmax(tv)
        return {
            "algorithm": self.top.name,
            "lambda": self.lam,
            "arms": arms,
            "places": places,
            "best": {"split": places[best]["split"], "threshold": places[best]["threshold"]},
        }

    def describe(self) -> str:
        return f"bandit:{self.top.name}+offload"

    def _encode_arms(self) -> list[Any]:
        n = self.n_exits
        return [
            [None if s == n else s, [None if t == NEVER else t for t in ths]]
            for s, ths in zip(self._at, self._ths)
        ]

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "package": self.package,
            "algorithm": self.top.name,
            "arms": self._encode_arms(),
            "lambda": self.lam,
            "algo": {
                "top": self.top.state(),
                "levels": [self.local.algo.state()] + [lv.state() for lv in self._levels[1:]],
            },
        }

    def _restore(self, saved: Any) -> Callable[[float], None]:
        if not isinstance(saved, dict) or not isinstance(saved.get("levels"), list):
            raise StateError("it holds no levels")
        if len(saved["levels"]) != len(self._ths):
            raise StateError("it was saved for other split points")
        top = self._algorithm(self.top.n)
        top.load(saved["top"])
        levels = []
        for ths, st in zip(self._ths, saved["levels"]):
            lv = self._algorithm(len(ths))
            lv.load(st)
            levels.append(lv)

        def install(lam: float) -> None:
            self.top = self.algo = top
            self.local.algo = levels[0]
            self._levels = levels
            self.lam = self.local.lam = lam

        return install


def _clip(r: float) -> float:
    return 0.0 if r < 0.0 else (1.0 if r > 1.0 else r)


def _best(vals: Sequence[float]) -> float:
    """The largest value, NaN (unseen) counting as -1."""
    return max(-1.0 if math.isnan(v) else v for v in vals)


def _argmax(vals: Sequence[float]) -> int:
    """The index of the largest value, NaN (unseen) counting as -1."""
    return max(range(len(vals)), key=lambda i: -1.0 if math.isnan(vals[i]) else vals[i])
