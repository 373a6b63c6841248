"""The runtime's own cost per ``predict``, apart from the interpreter's.

Zero-cost stub stages (they answer what the real stages answered for a few recorded
inputs) make ``predict`` time pure Python overhead. The runtime as of an older git
revision (``--before``) runs beside today's in the same process, in interleaved rounds,
so both see the same machine.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import edgekit

__all__ = ["RecordedStage", "overhead", "recording_stubs", "state_saving_tail"]


class RecordedStage:
    """A stage that costs nothing: it cycles through outputs its real runner gave."""

    def __init__(self, runner: Any, inputs: list[np.ndarray]) -> None:
        self.input_dtype = runner.input_dtype
        self.outputs = []
        for x in inputs:
            feats, logits = runner(x)
            self.outputs.append((None if feats is None else feats.copy(), logits.copy()))
        self.i = 0

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        self.i = (self.i + 1) % len(self.outputs)
        return self.outputs[self.i]

    def close(self) -> None:
        self.outputs = []


def recording_stubs(
    shape: tuple[int, ...], n_inputs: int = 7, seed: int = 0
) -> Callable[[int, Any], Any]:
    """A ``wrap_stage`` (for ``edgekit.load``) feeding each stage the recorded features of
    the one before, starting from random 8-bit inputs of ``shape`` (batch 1 included)."""
    rng = np.random.default_rng(seed)
    feed: list[np.ndarray] = []

    def wrap(k: int, runner: Any) -> Any:
        nonlocal feed
        if k == 0:
            info = np.iinfo(runner.input_dtype)
            feed = [
                rng.integers(info.min, info.max, shape, endpoint=True).astype(runner.input_dtype)
                for _ in range(n_inputs)
            ]
        stub = RecordedStage(runner, feed)
        feed = [f for f, _ in stub.outputs if f is not None]
        return stub

    return wrap


def _runtime_at(rev: str) -> Any:
    """``edgekit.runtime`` as of git revision ``rev``, imported under another name."""
    blob = subprocess.run(
        ["git", "archive", "--format=tar", rev, "runtime"], capture_output=True, check=True
    ).stdout
    root = Path(tempfile.mkdtemp(prefix="edgekit-before-"))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(root, filter="data")
    (root / "runtime").rename(root / "_edgekit_runtime_before")
    sys.path.insert(0, str(root))
    return importlib.import_module("_edgekit_runtime_before")


def _stubbed_before(rt: Any, package: Path, policy: str, shape: tuple[int, ...]) -> Any:
    """An old-runtime model with stub stages. Old runtimes had no runner seam: this
    sets the private fields that seam replaces (the baseline only)."""
    m = rt.load(package, backend="litert", policy=policy, threads=1)
    wrap = recording_stubs(shape)
    m._runners = [wrap(k, r) for k, r in enumerate(m._runners)]
    m._full = None
    return m


def _per_call_us(fns: dict[str, Callable[..., Any]], rounds: int, calls: int) -> dict[str, float]:
    """Median over interleaved rounds of the mean microseconds per call of each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(2000):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {k: float(np.median(v)) for k, v in times.items()}


def overhead(
    package: Path,
    x: np.ndarray,
    *,
    before: str | None = None,
    policies: tuple[str, ...] = ("full", "bandit"),
    rounds: int = 7,
    calls: int = 3000,
) -> dict[str, dict[str, float]]:
    """Python microseconds per ``predict`` with zero-cost stages: {policy: {"after":
    us, "before": us (when ``before`` names a git revision)}} for input ``x``."""
    shape = (1, *edgekit.read_manifest(package, verify=False).input.shape)
    old = _runtime_at(before) if before else None
    models, fns = [], {}
    for pol in policies:
        m = edgekit.load(package, backend="litert", policy=pol, wrap_stage=recording_stubs(shape))
        models.append(m)
        fns[f"{pol}/after"] = lambda m=m: m.predict(x)
        if old is not None:
            mo = _stubbed_before(old, package, pol, shape)
            models.append(mo)
            fns[f"{pol}/before"] = lambda mo=mo: mo.predict(x)
    try:
        us = _per_call_us(fns, rounds, calls)
    finally:
        for m in models:
            m.close()
    out: dict[str, dict[str, float]] = {}
    for key, v in us.items():
        pol, when = key.split("/")
        out.setdefault(pol, {})[when] = v
    return out


def state_saving_tail(
    package: Path, xs: np.ndarray, *, interval_s: float = 0.5, rounds: int = 6, n: int = 3000
) -> dict[str, dict[str, float]]:
    """p50 and p99 (ms) of ``predict`` latency for the bandit with its state saved every
    ``interval_s`` seconds (``on``) and with no state (``off``), real stages, interleaved."""
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-state-"))
    on = edgekit.load(
        package, backend="litert", policy="bandit", state=tmp / "b.json", save_interval_s=interval_s
    )
    off = edgekit.load(package, backend="litert", policy="bandit")
    lat: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for m in (on, off):
            for v in xs[:500]:
                m.predict(v)
        for r in range(rounds):
            for name, m in (("on", on), ("off", off)):
                for i in range(n):
                    t0 = time.perf_counter()
                    m.predict(xs[(r * n + i) % len(xs)])
                    lat[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        on.close()
        off.close()
    return {
        k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
        for k, v in lat.items()
    }
