"""Evaluation and benchmarking of a loaded package (``edgekit eval`` and ``edgekit bench``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._progress import Progress
from edgekit.runtime import NEVER, EdgeModel, backends, load

from ._replay import Recording, fixed_threshold_sweep, oracle_point

__all__ = ["bench", "cpu_info", "evaluate", "measure_stage_ms", "record"]


def measure_stage_ms(model: EdgeModel, xs: np.ndarray, n: int = 300) -> np.ndarray:
    """Median latency (ms) of each stage at batch 1, plus its confidence computation."""
    return model.stage_latency_ms(xs, n)


def record(model: EdgeModel, xs: np.ndarray, y: np.ndarray | None) -> Recording:
    """Every exit's label and confidence for ``xs`` and the measured stage latencies."""
    labels, confs = model.run_all_exits(xs)
    stage_ms = measure_stage_ms(model, xs)
    macs = np.array([e.macs_fraction for e in model.manifest.exits])
    yy = np.full(len(xs), -1) if y is None else np.asarray(y)
    return Recording(labels, confs, yy, stage_ms, macs)


def evaluate(
    model: EdgeModel,
    xs: np.ndarray,
    y: np.ndarray,
    *,
    verbose: bool = True,
    with_recording: bool = True,
) -> dict[str, Any]:
    """Stream ``xs`` through ``model.predict`` one at a time and measure what happened.

    Returns accuracy, mean cost (fraction of the full model), latency mean and
    percentiles, the exit histogram and, with ``with_recording``, the fixed-threshold
    frontier and the oracle on the same inputs for comparison.
    """
    correct = np.zeros(len(xs), bool)
    exits = np.zeros(len(xs), np.int64)
    with Progress(
        f"eval {model.policy.describe()}", len(xs), unit="inputs", enabled=verbose
    ) as bar:
        for i in range(len(xs)):
            p = model.predict(xs[i])
            correct[i] = p.label == y[i]
            exits[i] = p.exit
            bar.update(1)
    stats = model.stats()
    out: dict[str, Any] = {
        "package": str(model.root),
        "backend": model.backend,
        "policy": model.policy.describe(),
        "inputs": len(xs),
        "accuracy": float(correct.mean()),
        "mean_cost_fraction": stats["mean_cost_fraction"],
        "mean_macs_fraction": float(
            np.array([e.macs_fraction for e in model.manifest.exits])[exits].mean()
        ),
        "latency_ms": stats["latency_ms"],
        "exit_histogram": stats["exit_histogram"],
        "stage_latency_ms": stats["stage_latency_ms"],
    }
    if "arms" in stats:
        out["arms"] = stats["arms"]
    if "offload" in stats:
        out["offload"] = stats["offload"]
    if with_recording:
        rec = record(model, xs, y)
        out["full_model"] = fixed_threshold_sweep(rec, [NEVER])[0]
        out["oracle"] = oracle_point(rec)
        out["recording"] = rec
    return out


def bench(
    package: str | Path,
    xs: np.ndarray,
    *,
    backend: str = "litert",
    threads: int = 1,
    n: int = 1000,
    verbose: bool = True,
    instances: int = 3,
) -> dict[str, Any]:
    """Stage latencies, float vs INT8, and edgekit's overhead over a raw interpreter.

    Each side runs in ``instances`` interpreters of its own (``instances`` loaded models
    against as many raw interpreters): two interpreters of one model in one process can
    differ by several percent (where their buffers land), which one pair would pass off
    as edgekit's overhead or hide. All run in interleaved rounds on the same inputs, in
    an order that rotates every round; each figure is the median over its rounds.
    """
    root = Path(package)
    xs = xs[:n]
    out: dict[str, Any] = {
        "package": str(root),
        "backend": backend,
        "threads": threads,
        "inputs": len(xs),
        "instances": instances,
        "cpu": cpu_info(),
    }
    models = [load(root, backend=backend, policy="full", threads=threads)]
    try:
        m = models[0]
        out["stage_latency_ms"] = measure_stage_ms(m, xs).tolist()
        models += [
            load(root, backend=backend, policy="full", threads=threads)
            for _ in range(instances - 1)
        ]
        fmt = backends.get(backend).FORMAT
        feeds = m.quantize(xs)
        floats = np.asarray(xs, np.float32).reshape(len(xs), 1, *m.manifest.input.shape)
        runners: list[tuple[str, Any]] = []
        for mj in models:
            runners.append(("edgekit_full", _predict_runner(mj, xs)))
            for kind, key in (("raw_int8_full", fmt), ("raw_float_full", f"{fmt}_float")):
                rel = m.manifest.full.get(key)
                if rel is not None:
                    data = feeds[:, None] if kind == "raw_int8_full" else floats
                    runners.append((kind, _raw_runner(root / rel, fmt, data, threads)))
        rounds = 7 * instances
        block = max(1, len(xs) // rounds)
        times: dict[str, list[float]] = {k: [] for k, _ in runners}
        per: list[list[float]] = [[] for _ in runners]
        for _, fn in runners:  # warm up
            for i in range(min(50, len(xs))):
                fn(i)
        for r in range(rounds):
            start = (r * block) % (len(xs) - block + 1)
            idx = range(start, start + block)
            shift = r % len(runners)
            for j in list(range(shift, len(runners))) + list(range(shift)):
                name, fn = runners[j]
                t0 = time.perf_counter()
                for i in idx:
                    fn(i)
                ms = (time.perf_counter() - t0) / len(idx) * 1e3
                times[name].append(ms)
                per[j].append(ms)
    finally:
        for mj in models:
            mj.close()
    for name, ts in times.items():
        out[f"{name}_ms"] = float(np.median(ts))
    out["instance_ms"] = {
        name: [float(np.median(per[j])) for j, (k, _) in enumerate(runners) if k == name]
        for name in times
    }
    if "raw_int8_full" in times and "raw_float_full" in times:
        out["int8_speedup_vs_float"] = out["raw_float_full_ms"] / out["raw_int8_full_ms"]
    if "raw_int8_full" in times:
        out["overhead_full_vs_raw"] = out["edgekit_full_ms"] / out["raw_int8_full_ms"]
    return out


def _predict_runner(model: EdgeModel, xs: np.ndarray) -> Any:
    def run(i: int) -> None:
        model.predict(xs[i])

    return run


def cpu_info() -> dict[str, Any]:
    """CPU model and the instruction sets that decide int8 speed (VNNI, dot product)."""
    import platform

    info: dict[str, Any] = {"machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and "model" not in info:
            info["model"] = val.strip()
        if key in ("flags", "Features") and "int8_features" not in info:
            have = set(val.split())
            wanted = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
            info["int8_features"] = sorted(have & wanted)
    return info


def _raw_runner(path: Path, fmt: str, data: np.ndarray, threads: int) -> Any:
    """One raw invoke of an unsplit model on ``data[i]`` (the baseline to beat)."""
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
        inp = it.get_input_details()[0]["index"]
        sig = next(iter(it._get_full_signature_list().values()))["outputs"]
        last = sig[max(sig, key=lambda k: int(k.rsplit("_", 1)[-1]))] if sig else None
        set_tensor, invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor

        # What any caller must do with a model: feed it, run it, read its answer (the
        # last exit's logits; the float model's one output).
        def run_tflite(i: int) -> None:
            set_tensor(inp, data[i])
            invoke()
            if last is not None:
                get_tensor(last)

        return run_tflite
    import onnxruntime as ort

    from edgekit.runtime.backends.onnxruntime import session_options

    sess = ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )
    names = [sess.get_outputs()[-1].name]
    act = np.dtype(sess.get_inputs()[0].type[len("tensor(") : -1])
    if act == np.uint8 and data.dtype == np.int8:
        data = data.view(np.uint8) ^ np.uint8(0x80)

    def run_onnx(i: int) -> None:
        sess.run(names, {"input": data[i]})

    return run_onnx
