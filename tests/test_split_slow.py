"""The emulated slower device of the split benchmark and demo (benchmarks/split/slow.py):
each stage takes ``factor`` times its measured time, through ``wrap_stage``."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.split import SlowDevice, SlowedStage, check_factor

ROOT = Path(__file__).resolve().parents[1]


class _Stub:
    input_dtype = np.dtype(np.int8)

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        self.calls += 1
        return x, np.zeros(10, np.int8)

    def close(self) -> None:
        self.closed = True


def test_a_slowed_stage_answers_what_it_wraps_and_takes_the_extra_time() -> None:
    stub = _Stub()
    slow = SlowedStage(stub, 0.003)
    x = np.ones(4, np.int8)
    t0 = time.perf_counter()
    feats, logits = slow(x)
    dt = time.perf_counter() - t0
    assert feats is x and logits.shape == (10,) and stub.calls == 1
    assert dt >= 0.003  # never faster than asked (it may be later on a busy host)
    assert slow.input_dtype == stub.input_dtype
    slow.close()
    assert stub.closed


def test_the_device_slows_each_stage_by_its_own_measured_time() -> None:
    dev = SlowDevice(10.0, (0.04, 0.02))
    a, b = dev.wrap(0, _Stub()), dev.wrap(1, _Stub())
    assert a.extra_s == pytest.approx(9 * 0.04e-3) and b.extra_s == pytest.approx(9 * 0.02e-3)
    assert dev.slowed_ms == pytest.approx((0.4, 0.2))
    assert "10x slower" in dev.describe() and "0.040/0.020 ms" in dev.describe()
    assert SlowDevice(1.0, (0.04,)).wrap(0, _Stub()).extra_s == 0.0


@pytest.mark.parametrize("bad", [0.5, 0.0, -2.0, math.nan, math.inf])
def test_a_factor_below_one_or_not_finite_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="must be a number >= 1"):
        check_factor(bad)
    with pytest.raises(ValueError, match="must be a number >= 1"):
        SlowDevice(bad, (0.1,))


@pytest.mark.parametrize("bad", [-1e-3, math.nan, math.inf])
def test_a_negative_or_infinite_extra_time_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="extra_s"):
        SlowedStage(_Stub(), bad)


def test_the_demo_refuses_a_bad_slowdown_before_starting_anything(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "apps.split_demo", str(tmp_path / "none.edgepkg"),
           "--device-slowdown", "0.5", "--no-web", "--workdir", str(tmp_path / "w")]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "device slowdown 0.5 must be a number >= 1" in r.stderr
    assert "Traceback" not in r.stderr
