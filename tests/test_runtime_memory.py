"""Memory stays flat over a long run (a camera at 30 fps makes 2.6 million inputs a day).

The stages are zero-cost stubs through the public runner seam (``wrap_stage``) that
answer what the real stages answered for a few recorded inputs, so the test measures the
runtime's own Python, not the interpreter.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit.runtime import StageRunner

pytestmark = pytest.mark.slow

WARMUP = (1 << 16) + 2000  # past the latency ring's first lap (its pages are touched once)
RUN = 200_000


class Recorded:
    """A stage that costs nothing: it cycles through outputs its real runner gave."""

    def __init__(self, runner: StageRunner, inputs: list[np.ndarray]) -> None:
        self.input_dtype = runner.input_dtype
        self.outputs = []
        for x in inputs:
            feats, logits = runner(x)
            self.outputs.append((None if feats is None else feats.copy(), logits.copy()))
        self.i = 0
        runner.close()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        self.i = (self.i + 1) % len(self.outputs)
        return self.outputs[self.i]

    def close(self) -> None:
        self.outputs = []


def recording_stubs(package: Path, n_inputs: int = 7, seed: int = 0) -> Any:
    """A ``wrap_stage`` that feeds each stage the recorded features of the one before."""
    shape = (1, *edgekit.read_manifest(package, verify=False).input.shape)
    rng = np.random.default_rng(seed)
    feed: list[np.ndarray] = []

    def wrap(k: int, runner: StageRunner) -> StageRunner:
        nonlocal feed
        if k == 0:
            info = np.iinfo(runner.input_dtype)
            feed = [
                rng.integers(info.min, info.max, shape, endpoint=True).astype(runner.input_dtype)
                for _ in range(n_inputs)
            ]
        stub = Recorded(runner, feed)
        feed = [f for f, _ in stub.outputs if f is not None]
        return stub

    return wrap


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(package: Path, policy: str) -> dict[str, Any]:
    """Run WARMUP + RUN stubbed predictions; return the RSS growth over the RUN ones."""
    x = np.zeros((8, 8, 1), np.float32)
    with edgekit.load(package, policy=policy, wrap_stage=recording_stubs(package)) as m:
        predict = m.predict
        for _ in range(WARMUP):
            predict(x)
        gc.collect()
        before = _rss()
        for _ in range(RUN):
            predict(x)
        gc.collect()
        grown = _rss() - before
        stats = m.stats()
    return {
        "grown": grown,
        "predictions": stats["predictions"],
        "exits_used": len(set(np.nonzero(stats["exit_histogram"])[0].tolist())),
    }


@pytest.mark.parametrize("policy", ["bandit", "bandit:swucb"])
def test_memory_is_flat_over_200k_predictions(digits_pkg: Path, policy: str) -> None:
    # A fresh process: RSS of the pytest process also counts the threads and heaps that
    # earlier tests left behind (servers, brokers, Ray), which is not the runtime's memory.
    proc = subprocess.run(
        [sys.executable, __file__, str(digits_pkg), policy],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["predictions"] == WARMUP + RUN
    assert got["exits_used"] > 1, "the stubs vary the exits"
    grown = got["grown"]
    assert grown < 1 << 20, f"RSS grew {grown / 1024:.0f} KiB over {RUN} predictions"


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2])))
