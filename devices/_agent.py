"""The device side of push, bench and predict: ``python -m edgekit.devices._agent CMD PKG``.

Runs inside the device's edgekit environment, so it imports only the runtime (numpy and
one interpreter) and prints one JSON document on stdout. Errors print
``{"error": ..., "hint": ...}`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def _inputs(model: Any, path: str | None, n: int) -> np.ndarray:
    if path:
        xs = np.load(path, allow_pickle=False)
        return xs[:n] if n else xs
    shape = tuple(model.manifest.input.shape)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n or 8, *shape), dtype=np.uint8)


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _smoke(args: argparse.Namespace) -> dict[str, Any]:
    import edgekit.runtime as rt

    t0 = time.perf_counter()
    with rt.load(args.package, backend=args.backend, policy="full", threads=args.threads) as m:
        load_s = time.perf_counter() - t0
        shape = tuple(m.manifest.input.shape)
        probes = [np.zeros(shape, np.uint8), np.full(shape, 128, np.uint8)]
        preds = [m.predict(x) for x in probes]
        n_classes = m.manifest.stages[-1].logits.shape[-1]
        for p in preds:
            if not 0 <= p.label < n_classes or not np.isfinite(p.score):
                raise RuntimeError(f"smoke test: implausible prediction {p}")
        return {
            "ok": True,
            "backend": m.backend,
            "name": m.manifest.name,
            "exits": m.n_exits,
            "load_s": round(load_s, 3),
            "latency_ms": [round(p.latency_ms, 3) for p in preds],
            "labels": [p.label for p in preds],
            "python": platform.python_version(),
            "machine": platform.machine(),
        }


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    import edgekit.runtime as rt

    with rt.load(args.package, backend=args.backend, policy=args.policy, threads=args.threads) as m:
        xs = _inputs(m, args.input, args.n)
        preds = [m.predict(x) for x in xs]
        return {
            "backend": m.backend,
            "policy": m.policy.describe(),
            "labels": [p.label for p in preds],
            "names": [p.name for p in preds],
            "scores": [round(float(p.score), 5) for p in preds],
            "exits": [p.exit for p in preds],
            "latency_ms": [round(p.latency_ms, 3) for p in preds],
        }


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    import edgekit.runtime as rt
    from edgekit.runtime._evaluate import cpu_info, measure_stage_ms

    out: dict[str, Any] = {"python": platform.python_version(), "cpu": cpu_info()}
    with rt.load(args.package, backend=args.backend, policy="full", threads=args.threads) as m:
        xs = _inputs(m, args.input, args.n)
        out.update(backend=m.backend, threads=args.threads, inputs=len(xs), exits=m.n_exits)
        out["stage_latency_ms"] = [round(float(v), 4) for v in measure_stage_ms(m, xs, len(xs))]
    policies: dict[str, Any] = {}
    for spec in args.policies.split(","):
        with rt.load(args.package, backend=args.backend, policy=spec, threads=args.threads) as m:
            for x in xs[: min(20, len(xs))]:  # warm-up
                m.predict(x)
            t0 = time.perf_counter()
            preds = [m.predict(x) for x in xs]
            wall = time.perf_counter() - t0
            lat = np.array([p.latency_ms for p in preds])
            hist = np.bincount([p.exit for p in preds], minlength=m.n_exits)
            macs = [e.macs_fraction for e in m.manifest.exits]
            policies[spec] = {
                "mean_ms": round(float(lat.mean()), 4),
                "p50_ms": round(float(np.percentile(lat, 50)), 4),
                "p95_ms": round(float(np.percentile(lat, 95)), 4),
                "throughput_per_s": round(len(xs) / wall, 2),
                "exit_histogram": hist.tolist(),
                "mean_macs_fraction": round(float(np.dot(hist, macs) / len(xs)), 4),
            }
    full = policies.get("full", {}).get("mean_ms")
    for p in policies.values():
        if full:
            p["latency_vs_full"] = round(p["mean_ms"] / full, 4)
    out["policies"] = policies
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgekit.devices._agent")
    p.add_argument("command", choices=["smoke", "predict", "bench"])
    p.add_argument("package")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policy", default="full")
    p.add_argument("--policies", default="full,threshold:0.9,bandit")
    p.add_argument("--input", help=".npy of inputs (default: random images)")
    p.add_argument("-n", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        out = {"smoke": _smoke, "predict": _predict, "bench": _bench}[args.command](args)
    except Exception as exc:  # reported to the host as JSON, whatever it was
        err: dict[str, Any] = {
            "error": getattr(exc, "message", str(exc)),
            "type": type(exc).__name__,
        }
        if getattr(exc, "hint", None):
            err["hint"] = exc.hint  # type: ignore[attr-defined]
        print(json.dumps(err))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
