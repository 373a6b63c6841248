"""Bandit algorithms and confidence measures, on synthetic data (unit level)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from edgekit.runtime import ALGORITHMS, NEVER, BanditPolicy, Confidence, Outcome, parse_policy
from edgekit.runtime._bandit import make_algorithm  # internal: the bare algorithms


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_finds_the_best_arm(name: str) -> None:
    means = [0.2, 0.5, 0.8, 0.4]
    algo = make_algorithm(name, len(means), seed=1)
    rng = random.Random(0)
    picks = []
    for _ in range(3000):
        a = algo.choose()
        algo.update(a, [(a, min(1.0, max(0.0, rng.gauss(means[a], 0.1))))])
        picks.append(a)
    assert picks[-1000:].count(2) > 700, (name, [picks[-1000:].count(i) for i in range(4)])


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_state_round_trip(name: str) -> None:
    a = make_algorithm(name, 3, seed=0)
    for i in range(50):
        arm = a.choose()
        a.update(arm, [(arm, (i % 7) / 7), ((arm + 1) % 3, 0.5)])
    b = make_algorithm(name, 3, seed=0)
    b.load(a.state())
    assert b.t == a.t
    np.testing.assert_allclose(b.counts(), a.counts())
    np.testing.assert_allclose(np.nan_to_num(b.values()), np.nan_to_num(a.values()))


def test_non_stationary_variants_follow_a_change() -> None:
    for name in ("ducb", "swucb"):
        algo = make_algorithm(name, 2, seed=0)
        for t in range(4000):
            best = 0 if t < 2000 else 1
            a = algo.choose()
            algo.update(a, [(a, 0.8 if a == best else 0.3)])
        late = [algo.choose() for _ in range(1)]
        assert late == [1], name


def test_side_observations_update_every_determined_arm() -> None:
    pol = BanditPolicy(arms=(0.5, 0.9, NEVER), lam=0.0)
    pol.bind(3, [0.2, 0.5, 1.0])
    pol.chosen = 1  # threshold 0.9: stopped at exit 1 (conf 0.95)
    pol.observe(Outcome(1, [0.6, 0.95, 0.0], [0.2, 0.5, 1.0], 0.5, 0.0))
    counts = pol.algo.counts()
    # arm 0.5 would have stopped at exit 0, arm 0.9 at exit 1: both known;
    # "never" would have gone deeper than what was seen: unknown.
    assert counts == [1.0, 1.0, 0.0]
    vals = pol.algo.values()
    assert vals[0] == pytest.approx(0.6) and vals[1] == pytest.approx(0.95)


def test_reward_charges_cost() -> None:
    pol = BanditPolicy(arms=(0.5, NEVER), lam=0.5)
    pol.bind(2, [0.3, 1.0])
    pol.chosen = 1
    pol.observe(Outcome(1, [0.7, 0.9], [0.3, 1.0], 1.0, 0.0))
    v = pol.algo.values()
    assert v[0] == pytest.approx((0.7 - 0.5 * 0.3 + 0.5) / 1.5)
    assert v[1] == pytest.approx((0.9 - 0.5 * 1.0 + 0.5) / 1.5)


def test_parse_policy() -> None:
    assert parse_policy("full").name == "full"
    assert parse_policy("bandit:thompson").describe() == "bandit:thompson"
    assert parse_policy("threshold:0.8").describe() == "threshold:0.8"
    with pytest.raises(ValueError, match="unknown policy"):
        parse_policy("magic")
    with pytest.raises(ValueError, match="unknown bandit"):
        parse_policy("bandit:greedy")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("measure", ["max_softmax", "margin", "entropy"])
def test_confidence_matches_float_softmax(measure: str) -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (200, 10)).astype(np.int8)
    scale = 0.07
    p = _softmax(scale * q.astype(np.float64))
    if measure == "max_softmax":
        want = p.max(1)
    elif measure == "margin":
        s = np.sort(p, 1)
        want = s[:, -1] - s[:, -2]
    else:
        want = 1 + (p * np.log(p)).sum(1) / math.log(10)
    conf = Confidence(scale, measure)
    top, got = conf.batch(q)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(top, p.argmax(1))
    for i in range(5):
        t, c = conf.one(q[i])
        assert t == top[i] and c == pytest.approx(got[i])


def test_latency_budget_moves_lambda_until_it_is_met() -> None:
    from edgekit.evaluate import Recording, replay

    rng = np.random.default_rng(0)
    n = 6000
    confs = np.clip(rng.beta(5, 2, (n, 3)).cumsum(1) / np.array([1.6, 2.2, 2.5]), 0, 1)
    labels = np.zeros((n, 3), np.int64)
    rec = Recording(
        labels,
        confs,
        np.zeros(n, np.int64),
        np.array([1.0, 1.0, 1.0]),
        np.array([1 / 3, 2 / 3, 1.0]),
    )
    free = replay(rec, "bandit", lam=0.0)
    budget = replay(rec, "bandit", lam=0.0, budget_ms=1.5)
    assert free.latency_ms[-2000:].mean() > 2.0  # without a budget it runs deep
    assert budget.latency_ms[-2000:].mean() < 1.8  # the budget pulls it toward 1.5 ms


def test_feedback_penalises_an_early_exit_that_was_wrong() -> None:
    pol = BanditPolicy(arms=(0.5, NEVER), lam=0.0)
    pol.bind(2, [0.3, 1.0])
    pol.chosen = 0
    pol.observe(Outcome(0, [0.9, 0.0], [0.3, 1.0], 0.3, 0.0))
    assert pol.algo.values()[0] == pytest.approx(0.9)
    pol.feedback(correct=False, exit_taken=0)
    assert pol.algo.counts()[0] == 2.0
    assert pol.algo.values()[0] == pytest.approx(0.45)
    pol.feedback(correct=True, exit_taken=0)  # a right answer changes nothing
    pol.feedback(correct=False, exit_taken=1)  # nor does a wrong final answer
    assert pol.algo.counts()[0] == 2.0


@pytest.mark.parametrize("gamma", [0.998, 0.5])
def test_lazy_discount_matches_discounting_every_step(gamma: float) -> None:
    algo = make_algorithm("ducb", 5, seed=0, gamma=gamma)
    cnt, total = [0.0] * 5, [0.0] * 5
    rng = random.Random(3)
    for _ in range(3000):  # gamma 0.5: the stored sums are folded in several times
        rewards = [(a, rng.random()) for a in rng.sample(range(5), 2)]
        algo.update(0, rewards)
        cnt = [c * gamma for c in cnt]
        total = [s * gamma for s in total]
        for a, r in rewards:
            cnt[a] += 1.0
            total[a] += r
    np.testing.assert_allclose(algo.counts(), cnt, rtol=1e-9)
    np.testing.assert_allclose(algo.values(), [s / c for s, c in zip(total, cnt)], rtol=1e-9)
    again = make_algorithm("ducb", 5, seed=0, gamma=gamma)
    again.load(algo.state())
    np.testing.assert_allclose(again.counts(), cnt, rtol=1e-9)
    assert again.choose() == algo.choose()
