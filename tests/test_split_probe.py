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


def test_a_link_never_fast_is_not_probed() -> None:
    """At 1 Mbit/s in the benchmark a round trip costs 3x the local model: no round trip
    measured there ever beat running here, so nothing is probed."""
    rng = random.Random(2)
    pol = SplitBanditPolicy(lam=1.0, arms=(NEVER,), splits=(0,))
    pol.bind(N, COSTS)
    first = _run(pol, 3.0, 200, rng)
    later = _run(pol, 3.0, 3000, rng)
    assert sum(first) <= 4 and sum(later) == 0
