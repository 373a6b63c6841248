"""Split-computing policies and the circuit breaker, on synthetic data (unit level)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from edgekit.runtime import (
    NEVER,
    BanditPolicy,
    Outcome,
    Policy,
    SplitBanditPolicy,
    SplitPolicy,
    parse_policy,
)
from edgekit.runtime._offload import CircuitBreaker

N = 4  # exits
MACS = [0.1, 0.4, 0.6, 1.0]
COSTS = [0.1, 0.4, 0.6, 1.0]


def local(pol: Policy, k: int, confs: list[float], costs: list[float]) -> None:
    """Tell ``pol`` that an input ran here up to exit ``k``."""
    pol.observe(Outcome(k, confs, costs, costs[k], 0.0))


def offloaded(
    pol: Policy, s: int, confs: list[float], costs: list[float], conf: float, paid: float
) -> None:
    """Tell ``pol`` that the server answered an input sent at ``s`` with ``conf``."""
    pol.observe(Outcome(s - 1, confs, costs, paid, 0.0, s, conf))


def fallback(
    pol: Policy, s: int, k: int, confs: list[float], costs: list[float], paid: float
) -> None:
    """Tell ``pol`` that an offload at ``s`` failed and the device finished at exit ``k``."""
    pol.observe(Outcome(k, confs, costs, paid, 0.0, s, None))


def split_of(pol: Policy, ready: bool = True) -> tuple[tuple[float, ...], int]:
    """The next decision as (thresholds, split), N for "all here"."""
    d = pol.select(ready)
    return d.thresholds, N if d.split is None else d.split


def _bandit(**kw: object) -> SplitBanditPolicy:
    pol = SplitBanditPolicy(**kw)  # type: ignore[arg-type]
    pol.bind(N, MACS)
    return pol


def _arm(pol: SplitBanditPolicy, split: int | None, th: float) -> int:
    return pol.pairs.index((N if split is None else split, th))


def test_arms_are_split_threshold_pairs() -> None:
    pol = _bandit(arms=(0.5, 0.9, NEVER))
    # 3 local arms, one arm for split 0 (nothing runs before it), 3 per later split
    assert len(pol.pairs) == 3 + 1 + 3 * 3
    assert pol.pairs[:3] == ((N, 0.5), (N, 0.9), (N, NEVER))
    assert (0, NEVER) in pol.pairs and (0, 0.5) not in pol.pairs
    only = _bandit(arms=(NEVER,), splits=(0, 2))
    assert only.pairs == ((N, NEVER), (0, NEVER), (2, NEVER))
    with pytest.raises(ValueError, match="out of range"):
        _bandit(splits=(4,))


def test_select_sets_the_split_and_keeps_to_local_arms_when_offload_is_unavailable() -> None:
    pol = _bandit(arms=(0.5, NEVER), algorithm="thompson")
    for _ in range(200):
        assert split_of(pol, ready=False)[1] == N  # only local arms while the breaker is open
    seen = set()
    for _ in range(200):
        seen.add(split_of(pol)[1])
    assert seen - {N}, "offload arms are chosen again once the server is available"


@pytest.mark.parametrize("algorithm", ["ucb", "ducb", "swucb", "thompson", "exp3"])
def test_every_algorithm_respects_the_local_only_limit(algorithm: str) -> None:
    pol = _bandit(arms=(0.5, 0.9, NEVER), algorithm=algorithm)
    for _ in range(300):
        assert split_of(pol, ready=False)[1] == N
        local(pol, N - 1, [0.6, 0.7, 0.8, 0.9], COSTS)


def test_local_input_reveals_local_arms_and_offload_arms_that_exit_before_their_split() -> None:
    pol = _bandit(arms=(0.5, 0.9, NEVER), lam=0.0)
    pol.chosen = _arm(pol, None, NEVER)
    local(pol, 3, [0.6, 0.95, 0.3, 0.8], COSTS)  # ran every exit here
    cnt = dict(zip(pol.pairs, pol.algo.counts()))
    val = dict(zip(pol.pairs, pol.algo.values()))
    assert cnt[(N, 0.5)] == cnt[(N, 0.9)] == cnt[(N, NEVER)] == 1
    assert val[(N, 0.5)] == pytest.approx(0.6) and val[(N, 0.9)] == pytest.approx(0.95)
    assert val[(N, NEVER)] == pytest.approx(0.8)
    # (s, 0.5) stops at exit 0 for every s >= 1: known. (2, 0.9) and (3, 0.9) stop at
    # exit 1; (1, 0.9) would have offloaded: unknown, as is every arm that offloads.
    assert cnt[(1, 0.5)] == cnt[(2, 0.5)] == cnt[(3, 0.5)] == 1
    assert cnt[(2, 0.9)] == cnt[(3, 0.9)] == 1 and cnt[(1, 0.9)] == 0
    assert cnt[(0, NEVER)] == 0
    assert all(cnt[(s, NEVER)] == 0 for s in (1, 2, 3))


def test_offload_reveals_every_arm_offloading_at_the_same_split() -> None:
    lam = 0.2
    pol = _bandit(arms=(0.5, 0.9, NEVER), lam=lam)
    pol.chosen = _arm(pol, 2, NEVER)
    # exits 0 and 1 ran here (0.55, 0.7); the server answered with confidence 0.97 and
    # the caller waited 0.3 of the full local model's latency.
    offloaded(pol, 2, [0.55, 0.7, 0.0, 0.0], COSTS, 0.97, 0.3)
    cnt = dict(zip(pol.pairs, pol.algo.counts()))
    val = dict(zip(pol.pairs, pol.algo.values()))
    r_off = (0.97 - lam * 0.3 + lam) / (1 + lam)
    assert val[(2, NEVER)] == pytest.approx(r_off) and val[(2, 0.9)] == pytest.approx(r_off)
    assert val[(2, 0.5)] == pytest.approx((0.55 - lam * 0.1 + lam) / (1 + lam))  # exit 0
    assert cnt[(1, 0.9)] == cnt[(3, 0.9)] == cnt[(0, NEVER)] == cnt[(1, NEVER)] == 0
    assert cnt[(3, 0.5)] == 1  # stops at exit 0 before its split
    # local arms past exit 1 depend on exits that never ran here: unknown
    assert cnt[(N, 0.9)] == cnt[(N, NEVER)] == 0 and cnt[(N, 0.5)] == 1


def test_offload_at_the_last_stage_also_reveals_the_local_full_model() -> None:
    pol = _bandit(arms=(0.9, NEVER), lam=0.0)
    pol.chosen = _arm(pol, 3, NEVER)
    offloaded(pol, 3, [0.5, 0.6, 0.7, 0.0], COSTS, 0.99, 0.8)
    val = dict(zip(pol.pairs, pol.algo.values()))
    # the server's confidence is the last exit's; locally it would have cost costs[-1]
    assert val[(N, NEVER)] == pytest.approx(0.99) and val[(N, 0.9)] == pytest.approx(0.99)


def test_a_slow_round_trip_costs_more_than_running_locally() -> None:
    lam = 0.15
    pol = _bandit(arms=(NEVER,), lam=lam, splits=(0,))
    pol.chosen = _arm(pol, 0, NEVER)
    offloaded(pol, 0, [0.0] * 4, COSTS, 0.9, 3.0)  # 3x the local model's latency
    pol.chosen = _arm(pol, None, NEVER)
    local(pol, 3, [0.5, 0.6, 0.7, 0.9], COSTS)
    v = dict(zip(pol.pairs, pol.algo.values()))
    assert v[(0, NEVER)] < v[(N, NEVER)]
    # a round trip so slow that the reward would be negative is clipped at 0
    pol.chosen = _arm(pol, 0, NEVER)
    offloaded(pol, 0, [0.0] * 4, COSTS, 0.9, 100.0)
    assert min(pol.algo.values()) >= 0.0


def _counts(pol: SplitBanditPolicy) -> dict[tuple[int, float], float]:
    return dict(zip(pol.pairs, pol.algo.counts()))


def test_fresh_round_trips_estimate_offload_arms_that_were_not_played() -> None:
    lam = 0.5
    pol = _bandit(arms=(NEVER,), lam=lam, rtt_window=10)
    full = [0.5, 0.6, 0.7, 0.8]
    pol.chosen = _arm(pol, 0, NEVER)
    for link in (0.3, 2.0):  # link costs measured at split 0 (2.0: a cold start)
        offloaded(pol, 0, [0.0] * 4, COSTS, 0.9, link)
    pol.chosen = _arm(pol, None, NEVER)
    local(pol, 3, full, COSTS)
    assert _counts(pol)[(0, NEVER)] == 2  # two measurements are not enough to estimate
    pol.chosen = _arm(pol, 0, NEVER)
    offloaded(pol, 0, [0.0] * 4, COSTS, 0.9, 0.4)
    pol.chosen = _arm(pol, None, NEVER)
    local(pol, 3, full, COSTS)  # ran to the end here: the last exit's confidence is known
    c = _counts(pol)
    assert c[(0, NEVER)] == 4  # estimated with the median link cost, 0.4
    assert c[(1, NEVER)] == c[(2, NEVER)] == c[(3, NEVER)] == 0  # never measured there
    v = dict(zip(pol.pairs, pol.algo.values()))
    rewards = [(0.9 - lam * x + lam) / (1 + lam) for x in (0.3, 2.0, 0.4)]
    rewards.append((0.8 - lam * 0.4 + lam) / (1 + lam))
    assert v[(0, NEVER)] == pytest.approx(sum(max(0.0, r) for r in rewards) / 4)
    # An offload at split 2 also estimates split 0 (exits before 2 ran here).
    pol.chosen = _arm(pol, 2, NEVER)
    offloaded(pol, 2, [0.5, 0.6, 0, 0], COSTS, 0.9, 0.4 + 0.2)
    assert _counts(pol)[(0, NEVER)] == 5
    # After rtt_window inputs without a round trip at a split, no more estimates.
    for _ in range(10):
        local(pol, 3, full, COSTS)
    stale = _counts(pol)
    local(pol, 3, full, COSTS)
    assert _counts(pol)[(0, NEVER)] == stale[(0, NEVER)]
    assert _counts(pol)[(N, NEVER)] == stale[(N, NEVER)] + 1


def test_fresh_round_trips_estimate_every_input_as_long_as_the_algorithm_remembers() -> None:
    pol = _bandit(arms=(NEVER,))
    assert pol.rtt_window == math.inf  # ucb remembers every input: a round trip stays fresh
    pol.chosen = _arm(pol, 0, NEVER)
    for _ in range(3):
        offloaded(pol, 0, [0.0] * 4, COSTS, 0.9, 0.3)
    pol.chosen = _arm(pol, None, NEVER)
    for _ in range(100):
        local(pol, 3, [0.5, 0.6, 0.7, 0.8], COSTS)
    # every input that ran to the end estimates the offload arm: it is learned as fast as
    # the local arm, without being played (the old cap of ten per round trip made the
    # bandit explore it, a round trip each time)
    assert _counts(pol)[(0, NEVER)] == 3 + 100
    assert _bandit(algorithm="ducb").rtt_window == pytest.approx(500.0)  # 1 / (1 - 0.998)
    assert _bandit(algorithm="swucb", options={"window": 300}).rtt_window == 300
    off = _bandit(arms=(NEVER,), rtt_window=0)  # estimates off
    off.chosen = _arm(off, 0, NEVER)
    for _ in range(3):
        offloaded(off, 0, [0.0] * 4, COSTS, 0.9, 0.3)
    off.chosen = _arm(off, None, NEVER)
    local(off, 3, [0.5, 0.6, 0.7, 0.8], COSTS)
    assert _counts(off)[(0, NEVER)] == 3
    with pytest.raises(ValueError, match="rtt_window"):
        _bandit(rtt_window=-1)


def test_fallback_charges_the_chosen_arm_what_was_paid() -> None:
    pol = _bandit(arms=(0.9, NEVER), lam=0.5)
    pol.chosen = _arm(pol, 1, NEVER)
    fallback(pol, 1, 3, [0.5, 0.6, 0.7, 0.8], COSTS, 2.0)
    val = dict(zip(pol.pairs, pol.algo.values()))
    cnt = dict(zip(pol.pairs, pol.algo.counts()))
    assert val[(1, NEVER)] == pytest.approx(max(0.0, (0.8 - 0.5 * 2.0 + 0.5) / 1.5))
    assert cnt[(N, NEVER)] == 1  # the exits that ran here still speak for local arms
    assert cnt[(1, 0.9)] == 0  # a different threshold at the same split: not observed


def _simulate(pol: SplitBanditPolicy, rtt: float, steps: int, rng: random.Random) -> list[int]:
    """Inputs whose exits grow in confidence; offloading at s costs COSTS[s-1] + rtt."""
    splits = []
    for _ in range(steps):
        th, s = split_of(pol)
        base = rng.uniform(0.3, 0.7)
        confs = [min(1.0, base + 0.1 * k) for k in range(N)]
        k = 0
        while k < min(s, N - 1) and confs[k] < th[k]:
            k += 1
        if s < N and k == s:  # reached the split: offload
            paid = (COSTS[s - 1] if s else 0.0) + rtt
            offloaded(pol, s, confs, COSTS, confs[-1], paid)
        else:
            local(pol, k, confs, COSTS)
        splits.append(s if s < N and k == s else N)
    return splits


def test_bandit_offloads_on_a_fast_link_and_follows_it_when_it_slows() -> None:
    rng = random.Random(0)
    pol = _bandit(arms=(NEVER,), algorithm="ducb", lam=0.5)
    fast = _simulate(pol, 0.05, 3000, rng)[-1000:]
    # Sending the input beats running 4 stages; nearby splits (one stage, 0.1, more) are
    # close runners-up that UCB keeps sampling.
    assert fast.count(N) < 50 and max(range(N + 1), key=fast.count) == 0
    slow = _simulate(pol, 2.0, 4000, rng)[-1000:]
    assert slow.count(N) > 800  # a round trip of twice the local model: back to the device


def test_split_bandit_state_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    pol = _bandit(arms=(0.5, NEVER), state_path=str(path))
    _simulate(pol, 0.1, 100, random.Random(1))
    pol.save()
    saved = json.loads(path.read_text())
    assert [None, None] in saved["arms"] and [0, None] in saved["arms"]
    again = _bandit(arms=(0.5, NEVER), state_path=str(path))
    assert again.algo.t == 100
    assert again.arm_values()["arms"] == pol.arm_values()["arms"]
    # a local-only bandit's state does not fit the split arms: start fresh, warn
    local = BanditPolicy(arms=(0.5, NEVER), state_path=str(tmp_path / "l.json"))
    local.bind(N, MACS)
    local.save()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        _bandit(arms=(0.5, NEVER), state_path=str(tmp_path / "l.json"))


def test_arm_values_name_split_and_threshold() -> None:
    pol = _bandit(arms=(0.9, NEVER))
    _simulate(pol, 0.1, 50, random.Random(2))
    av = pol.arm_values()
    assert {a["split"] for a in av["arms"]} == {"local", 0, 1, 2, 3}
    assert {"split", "threshold"} <= set(av["best"])
    assert pol.describe() == "bandit:ucb+offload"


def test_parse_split_policies() -> None:
    p = parse_policy("split:2", offload=True)
    assert isinstance(p, SplitPolicy) and p.needs.offloads
    p.bind(N, MACS)
    assert p.select(True) == ((NEVER,) * N, 2)
    q = parse_policy("split:1:0.8", offload=True)
    q.bind(N, MACS)
    assert q.select(True) == ((0.8,) * 3 + (NEVER,), 1) and q.describe() == "split:1:0.8"
    assert isinstance(parse_policy("bandit:swucb", offload=True), SplitBanditPolicy)
    assert type(parse_policy("bandit:swucb")) is BanditPolicy
    assert parse_policy("local").name == "full"
    assert parse_policy("local:0.9").describe() == "threshold:0.9"
    with pytest.raises(ValueError, match="offload="):
        parse_policy("split:1")
    with pytest.raises(ValueError, match="split:S"):
        parse_policy("split:x", offload=True)
    with pytest.raises(ValueError, match="past the last stage"):
        parse_policy("split:4", offload=True).bind(N, MACS)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_circuit_breaker_opens_backs_off_and_recovers() -> None:
    clock = _Clock()
    b = CircuitBreaker(failures=3, backoff_s=1.0, max_backoff_s=3.0, jitter=0.2, clock=clock)
    assert b.ready() and b.state == "closed"
    b.failure()
    b.failure()
    assert b.ready()  # two failures in a row: still closed
    b.success()
    b.failure()
    b.failure()
    assert b.ready() and b.consecutive == 2  # the success reset the count
    b.failure()
    assert not b.ready() and b.state == "open" and b.opened == 1
    first = b.retry_at - clock.t
    assert 0.8 <= first <= 1.2  # backoff 1 s with +-20% jitter
    clock.t += first
    assert b.ready() and b.state == "half-open"  # one probe may go
    b.failure()  # the probe failed: open again, twice as long
    second = b.retry_at - clock.t
    assert not b.ready() and 1.6 <= second <= 2.4
    clock.t += second
    b.failure()
    third = b.retry_at - clock.t
    assert 2.4 <= third <= 3.6  # capped at 3 s (+-20%)
    clock.t += third
    b.success()
    assert b.state == "closed" and b.ready() and b.backoff == 1.0


def _paid(pol: Policy, link: float, steps: int, seed: int) -> tuple[float, float]:
    """A stream of inputs of random difficulty, whose exits grow in confidence, through
    ``pol``: offloading at ``s`` costs the stages before it plus ``link``. The mean cost
    paid and the share offloaded over the second half (after learning)."""
    rng = random.Random(seed)
    pol.bind(N, MACS)
    paid, off = [], []
    for _ in range(steps):
        d = pol.select(True)
        s = N if d.split is None else d.split
        hard = rng.random()
        confs = [
            min(1.0, max(0.1, 1.0 - hard * (1.0 - 0.2 * k) + rng.gauss(0, 0.05))) for k in range(N)
        ]
        k = 0
        while k < min(s, N - 1) and confs[k] < d.thresholds[k]:
            k += 1
        if s < N and k == s:
            cost = (COSTS[s - 1] if s else 0.0) + link * rng.uniform(0.8, 1.2)
            offloaded(pol, s, confs, COSTS, confs[-1], cost)
        else:
            cost = COSTS[k]
            local(pol, k, confs, COSTS)
        paid.append(cost)
        off.append(s < N and k == s)
    half = steps // 2
    return sum(paid[half:]) / (steps - half), sum(off[half:]) / (steps - half)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_a_slow_link_the_bandit_stops_exploring_offloads_and_on_a_fast_one_offloads(
    seed: int,
) -> None:
    # Every input that ran to the end here estimates the offload arms from the measured
    # round trips, so on a slow link they are learned without being played. Before, at
    # most ten estimates per round trip left them unknown, and exploring them cost a round
    # trip each time: 3-5% of inputs were still offloaded after learning, at 1.04-1.28x the
    # local-only bandit's cost.
    lam, steps = 1.0, 2000
    alone, _ = _paid(BanditPolicy(lam=lam), 0.0, steps, seed)
    for link in (3.0, 1.0):  # offloading anywhere is slower than the early exits here
        paid, share = _paid(SplitBanditPolicy(lam=lam), link, steps, seed)
        # (the cost itself differs by a few percent between two bandits that weigh
        # confidence against cost alike and settle on neighbouring thresholds)
        assert share <= 0.01 and paid <= 1.1 * alone, (link, share, paid, alone)
    # a fast link: sending the input (0.05 of the local model) beats every local arm
    paid, share = _paid(SplitBanditPolicy(lam=lam), 0.05, steps, seed)
    assert share >= 0.95 and paid <= 0.05 * 1.25, (share, paid)
