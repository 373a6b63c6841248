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

__all__ = [
    "RecordedStage",
    "overhead",
    "recording_stubs",
    "state_saving_tail",
    "window_profile",
]


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


def window_profile(
    package: Path,
    x8: np.ndarray,
    xf: np.ndarray,
    *,
    before: str | None = None,
    rounds: int = 40,
    block: int = 150,
    cpu: bool = False,
) -> dict[str, float]:
    """Microseconds per call of ``policy=full`` against LiteRT with real interpreters, in
    interleaved rounds (rotating order, median of ``rounds`` blocks of ``block`` inputs):

    ``raw``: the bench's baseline (public set_tensor of the pre-quantized input, invoke,
    get_tensor of the last exit); ``invoke``: the interpreter's bare C++ invoke on its
    own buffers (the floor); ``write+invoke`` and ``write+invoke+read``: the in-place
    path's steps one by one (``Quantizer.into``, invoke, ``Confidence.reader``), on one
    interpreter; ``predict``: ``EdgeModel.predict`` (and ``before:predict`` at git
    revision ``before``). ``/u8`` uint8 pixels ``x8``, ``/f`` float images ``xf``.
    ``cpu``: time each block by this thread's CPU time, not the wall clock (on a host
    shared with other work, what the calls cost without the time spent waiting for a
    core; caches are still shared).
    """
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.runtime import Confidence, Quantizer, backends

    manifest = edgekit.read_manifest(package, verify=False)
    rel = package / manifest.full["tflite"]
    n_exits = len(manifest.stages)
    full: Any = backends.get("litert").open_full(rel, n_exits, 1)
    views = full.views()
    if views is None:
        raise RuntimeError("this LiteRT lends no buffers: no in-place steps to time")
    vin, vout, invoke = views
    q0 = manifest.stages[0].input.quant
    last_q = manifest.stages[-1].logits.quant
    assert q0 is not None and last_q is not None
    quant = Quantizer(manifest.input, q0.as_dtype(vin.dtype.name))
    write, read = quant.into(vin), Confidence(last_q.scale).reader(vout)
    feeds = quant.batch(xf)[:, None]
    it = Interpreter(model_path=str(rel), num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    sig = next(iter(it._get_full_signature_list().values()))["outputs"]
    out = sig[f"exit_{n_exits - 1}"]
    set_tensor, raw_invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor
    fns: dict[str, Callable[[int], Any]] = {}

    def raw(i: int) -> None:
        set_tensor(inp, feeds[i])
        raw_invoke()
        get_tensor(out)

    fns["raw"] = raw
    fns["invoke"] = lambda i: invoke()
    models = [edgekit.load(package, backend="litert", policy="full")]
    old = _runtime_at(before) if before else None
    if old is not None:
        models.append(old.load(package, backend="litert", policy="full", threads=1))
    for kind, xs in (("u8", x8), ("f", xf)):

        def steps2(i: int, xs: np.ndarray = xs) -> None:
            write(xs[i])
            invoke()

        def steps3(i: int, xs: np.ndarray = xs) -> None:
            write(xs[i])
            invoke()
            read()

        fns[f"write+invoke/{kind}"], fns[f"write+invoke+read/{kind}"] = steps2, steps3
        for m, who in zip(models, ("", "before:")):
            fns[f"{who}predict/{kind}"] = lambda i, p=m.predict, xs=xs: p(xs[i])
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    n = min(len(x8), len(xf))
    clock = time.thread_time if cpu else time.perf_counter
    try:
        for fn in fns.values():
            for i in range(300):
                fn(i % n)
        for r in range(rounds):
            start = (r * block) % max(1, n - block)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn = fns[name]
                t0 = clock()
                for i in range(start, start + block):
                    fn(i)
                times[name].append((clock() - t0) / block * 1e6)
    finally:
        for m in models:
            m.close()
        fns.clear()
        full.close()
    return {k: float(np.median(v)) for k, v in times.items()}
