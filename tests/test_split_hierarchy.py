"""The hierarchical split bandit through the public seams: a stand-in server (``FakeServer``
of tests/_standin.py, answering on loopback, optionally after a delay) and a device
slowed through ``edgekit.load(wrap_stage=...)``, so that sending the input pays until the
link slows. Where it goes is read from the predictions and ``stats()`` only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _net import refused_port
from _standin import FakeServer

import edgekit
from edgekit.data import load_digits
from edgekit.runtime import NEVER, OffloadConfig, SplitBanditPolicy

pytestmark = pytest.mark.slow

EXTRA_S = 0.003  # each local stage takes 3 ms longer: a device slower than this host


class _Slow:
    """A stage runner followed by a sleep (the ``wrap_stage`` seam)."""

    def __init__(self, runner: Any, extra_s: float) -> None:
        self.runner, self.extra_s, self.input_dtype = runner, extra_s, runner.input_dtype

    def __call__(self, x: np.ndarray) -> Any:
        out = self.runner(x)
        time.sleep(self.extra_s)
        return out

    def close(self) -> None:
        self.runner.close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture(scope="module")
def xs() -> np.ndarray:
    x = load_digits().x_test
    return np.concatenate([x, x])[:500]


def _load(pkg: Path, url: str, policy: str = "bandit:ducb", **kw: Any) -> Any:
    cfg = OffloadConfig(url, timeout_ms=5000.0, failures=3, backoff_ms=60_000.0)
    return edgekit.load(
        pkg,
        policy=policy,
        offload=cfg,
        wrap_stage=lambda k, r: _Slow(r, EXTRA_S),
        unsplit=False,  # every stage slowed alike
        lam=1.0,
        **kw,
    )


def test_a_fast_link_makes_it_offload_and_a_link_that_slows_moves_it_back(
    digits_pkg: Path, xs: np.ndarray, fake: FakeServer
) -> None:
    with _load(digits_pkg, fake.url, arms=(NEVER,)) as m:
        assert isinstance(m.policy, SplitBanditPolicy)
        fast = [m.predict(x) for x in xs[:150]]
        assert sum(p.offloaded and p.split == 0 for p in fast[-50:]) >= 45  # the input itself
        assert m.stats()["arms"]["best"]["split"] == 0
        fake.delay = 0.06  # the server answers 60 ms later: 5x the device's own stages
        slow = [m.predict(x) for x in xs[150:450]]
        st = m.stats()
    assert sum(not p.offloaded for p in slow[-60:]) >= 57
    assert not any(p.fallback for p in fast + slow)  # slow, but within the deadline
    assert st["arms"]["best"]["split"] == "local"


def test_a_slow_link_keeps_it_local_with_early_exits(
    digits_pkg: Path, xs: np.ndarray, fake: FakeServer
) -> None:
    fake.delay = 0.06
    with _load(digits_pkg, fake.url, policy="bandit") as m:
        preds = [m.predict(x) for x in xs[:300]]
        st = m.stats()
    late = preds[-100:]
    assert sum(p.offloaded for p in late) <= 2  # exploring costs one round trip at a time
    assert sum(p.offloaded for p in preds) <= 20
    assert any(p.exit < 3 for p in late)  # the local level stops early, as the local bandit
    assert st["arms"]["best"]["split"] == "local"


def test_a_dead_server_keeps_it_local_and_costs_only_the_breakers_tries(
    digits_pkg: Path, xs: np.ndarray
) -> None:
    with refused_port() as port, _load(digits_pkg, f"http://127.0.0.1:{port}") as m:
        preds = [m.predict(x) for x in xs[:80]]
        st = m.stats()["offload"]
    assert not any(p.offloaded for p in preds)
    assert sum(p.fallback for p in preds) == 3  # then the breaker stays open (60 s backoff)
    assert st["failures"] == {"refused": 3} and st["breaker"]["state"] == "open"
