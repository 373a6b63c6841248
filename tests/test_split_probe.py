"""The split bandit probes a split that only a slow spell of the link keeps rated low
(unit level, through the policy contract: ``select`` / ``observe`` / ``arm_values``).

Estimates re-use the last measured round trips at a split; without probes, a split
measured during a slow spell stayed rated low for good, and the bandit never offloaded
again when the link recovered (seen in ``benchmarks.split`` at 10 Mbit/s: the split-only
bandit kept every measured input here at 2.3x the static split 0).
"""

from __future__ import annotations

import random

import pytest

from edgekit.runtime import NEVER, Outcome, SplitBanditPolicy

N = 4
COSTS = [0.1, 0.4, 0.6, 1.0]


def _run(pol: SplitBanditPolicy, link: float, n: int, rng: random.Random) -> list[bool]:
    """``n`` inputs; sending the input (split 0) costs ``link`` times the local model.
    Which were offloaded."""
    out = []
    for _ in range(n):
        th, split = pol.select(True)
        base = rng.uniform(0.5, 0.9)
        confs = [min(1.0, base + 0.03 * k) for k in range(N)]
        k = 0
        s = N if split is None else split
        while k < min(s, N - 1) and confs[k] < th[k]:
            k += 1
        if s < N and k == s:
            paid = (COSTS[s - 1] if s else 0.0) + link
            pol.observe(Outcome(s - 1, confs, COSTS, paid, paid, s, confs[-1]))
            out.append(True)
        else:
            pol.observe(Outcome(k, confs, COSTS, COSTS[k], COSTS[k]))
            out.append(False)
    return out


@pytest.mark.parametrize("algorithm", ["ucb", "ducb"])
def test_after_a_slow_spell_the_bandit_offloads_again(algorithm: str) -> None:
    rng = random.Random(0)
    pol = SplitBanditPolicy(algorithm=algorithm, lam=1.0, arms=(NEVER,), splits=(0,))
    pol.bind(N, COSTS)
    assert sum(_run(pol, 0.4, 300, rng)[-100:]) >= 90  # a fast link: the input is sent
    assert sum(_run(pol, 1.3, 100, rng)[-50:]) <= 5  # a slow spell: back here
    back = _run(pol, 0.4, 1000, rng)  # the link is fast again
    assert sum(back[-300:]) >= 270, sum(back[-300:])
    assert pol.arm_values()["best"]["split"] == 0


def test_a_link_that_stays_slow_is_probed_ever_more_rarely() -> None:
    rng = random.Random(1)
    pol = SplitBanditPolicy(lam=1.0, arms=(NEVER,), splits=(0,))
    pol.bind(N, COSTS)
    _run(pol, 0.4, 300, rng)  # fast: the fastest round trip measured there is 0.4
    slow = _run(pol, 1.3, 4000, rng)  # then slow for good
    early, late = sum(slow[200:1000]), sum(slow[-2000:])
    assert early >= 1  # probed: it was fast once
    assert late <= early and late <= 4  # each probe that loses doubles the wait


def test_a_link_never_fast_is_probed_only_until_three_round_trips_say_so() -> None:
    """At 1 Mbit/s in the benchmark a round trip costs 3x the local model: once three
    measured round trips agree (one alone may be a cold answer), nothing is probed."""
    rng = random.Random(2)
    pol = SplitBanditPolicy(lam=1.0, arms=(NEVER,), splits=(0,))
    pol.bind(N, COSTS)
    first = _run(pol, 3.0, 400, rng)
    later = _run(pol, 3.0, 3000, rng)
    # the first answer (it opened the connection) and three measured ones
    assert sum(first) <= 4 and sum(later) == 0


def test_one_cold_round_trip_does_not_keep_a_split_rated_low() -> None:
    """The server's first answer at a split can be slow (its model's first inference);
    measured once, it rated that split low for good and nothing probed it again (seen in
    ``benchmarks.split`` at 100 Mbit/s: one 120 ms answer, split 0 never used again)."""
    rng = random.Random(3)
    pol = SplitBanditPolicy(lam=1.0, arms=(NEVER,), splits=(0,))
    pol.bind(N, COSTS)
    link = [0.3, 15.0]  # the connection's first answer, then one cold one; then 0.3
    out = []
    for _ in range(600):
        _, split = pol.select(True)
        confs = [rng.uniform(0.5, 0.9)] * N
        if split == 0:
            paid = link.pop(0) if link else 0.3
            pol.observe(Outcome(-1, confs, COSTS, paid, paid, 0, confs[-1]))
        else:
            pol.observe(Outcome(N - 1, confs, COSTS, 1.0, 1.0))
        out.append(split == 0)
    assert not link and sum(out[-200:]) >= 180
