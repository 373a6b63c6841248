"""An emulated slower device: every local stage takes ``factor`` times its measured time here.

Split computing pays only when the device is slower than the server. On one host the
"device" and the server share a CPU, so the benchmark and the demo slow the device down
through the runtime's public stage-runner seam (``edgekit.load(..., wrap_stage=...)``):
each stage runs, then waits ``(factor - 1)`` times that stage's median time measured here
(sleep, then spin the last 0.2 ms for precision). The factor is a parameter, not a
measurement of any board.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SlowDevice", "SlowedStage", "check_factor", "measure_device"]

_SPIN_S = 2e-4  # the last part of the wait is spun, not slept (sleep overshoots)


class SlowedStage:
    """A stage runner that takes ``extra_s`` seconds longer than the one it wraps."""

    def __init__(self, runner: Any, extra_s: float) -> None:
        if not (extra_s >= 0.0 and math.isfinite(extra_s)):
            raise ValueError(f"extra_s = {extra_s!r} must be a finite number >= 0")
        self.runner = runner
        self.extra_s = extra_s
        self.input_dtype = runner.input_dtype

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        out: tuple[np.ndarray | None, np.ndarray] = self.runner(x)
        extra = self.extra_s
        if extra > 0.0:
            end = time.perf_counter() + extra
            if extra > 2.0 * _SPIN_S:
                time.sleep(extra - _SPIN_S)
            while time.perf_counter() < end:
                pass
        return out

    def close(self) -> None:
        self.runner.close()


@dataclass(frozen=True)
class SlowDevice:
    """A device ``factor`` times slower than this host: ``stage_ms`` are the stages' median
    times measured here; :meth:`wrap` is the ``wrap_stage`` to pass to ``edgekit.load``."""

    factor: float
    stage_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        check_factor(self.factor)

    def wrap(self, k: int, runner: Any) -> SlowedStage:
        """Stage ``k``'s runner, slowed (the ``wrap_stage`` seam of ``edgekit.load``)."""
        return SlowedStage(runner, (self.factor - 1.0) * self.stage_ms[k] / 1e3)

    @property
    def slowed_ms(self) -> tuple[float, ...]:
        """What each stage takes on the emulated device."""
        return tuple(self.factor * t for t in self.stage_ms)

    def describe(self) -> str:
        here = "/".join(f"{t:.3f}" for t in self.stage_ms)
        slow = "/".join(f"{t:.3f}" for t in self.slowed_ms)
        return (
            f"device emulated {self.factor:g}x slower than this host: stages {here} ms "
            f"here -> {slow} ms (each stage sleeps the difference)"
        )


def check_factor(factor: float) -> float:
    """``factor`` as a float, or ``ValueError`` unless it is a finite number >= 1."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1.0):
        raise ValueError(
            f"device slowdown {factor!r} must be a number >= 1 (1: this host's own speed)"
        )
    return float(factor)


def measure_device(
    package: str | os.PathLike[str],
    factor: float,
    xs: np.ndarray,
    *,
    backend: str = "auto",
    threads: int | None = 1,
    n: int = 300,
) -> SlowDevice:
    """Measure each stage's median time here on the first ``n`` of ``xs`` (as the runtime
    runs it, with its confidence) and return the device ``factor`` times slower."""
    import edgekit

    factor = check_factor(factor)
    with edgekit.load(package, backend=backend, policy="full", threads=threads) as m:
        ms = m.stage_latency_ms(xs, n)
    return SlowDevice(factor, tuple(float(t) for t in ms))
