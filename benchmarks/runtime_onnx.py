"""ONNX runtime latency: the bandit against the full model on an ONNX package, today's
runtime beside the one of an earlier git revision, interleaved input by input (in a
random order per input).

    python -m benchmarks.runtime_onnx --package build/vgg.edgepkg [--before REV] [-n 3000]

For each (runtime, policy): accuracy, the mean and median of ``predict``'s wall time and
of the latency ``predict`` reports (what ``edgekit eval`` averages), and the bandit/full
ratios. In the same rotation, the interpreter alone: each stage and the unsplit model run
straight from the onnxruntime backend on the same input, no runtime code around them.
From those: each exit's share of the full model's time next to its share of the MACs,
and how much of a bandit ``predict`` is spent outside the interpreter's runs. Medians are
what the code costs; on a loaded machine the means also hold the time the process waited
for a CPU, so two more ratios leave that out: the bandit's inputs grouped by the stages
they ran, each group at its median, against the full model's median; and the same with
the raw interpreter runs alone (a runtime that cost nothing). Writes ``runtime_onnx.json``
into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.data import load_dataset
from edgekit.runtime import NEVER, backends

from ._overhead import _runtime_at

POLICIES = ("full", "bandit")


class _Raw:
    """The package's stages and unsplit model opened straight from the backend (no
    runtime code around them), timed per call in microseconds."""

    def __init__(self, package: Path, n: int) -> None:
        backend = backends.get("onnxruntime")
        manifest = edgekit.read_manifest(package, verify=False)
        self.stages = [backend.open_stage(package / s.files["onnx"], 1) for s in manifest.stages]
        rel = manifest.full.get("onnx")
        self.full = backend.open_full(package / rel, len(self.stages), 1) if rel else None
        self.macs_fraction = [e.macs_fraction for e in manifest.exits]
        self.stage_us = np.zeros((n, len(self.stages)))
        self.unsplit_us = np.zeros(n)

    def __call__(self, i: int, x: np.ndarray) -> None:
        """Time every stage (each on the previous one's output) and the unsplit model on
        ``x``, an already quantized (1, H, W, C) input."""
        clock = time.perf_counter_ns
        h: Any = x
        for k, run in enumerate(self.stages):
            t0 = clock()
            feats, _ = run(h)
            self.stage_us[i, k] = (clock() - t0) / 1e3
            h = feats
        if self.full is not None:
            t0 = clock()
            self.full(x)
            self.unsplit_us[i] = (clock() - t0) / 1e3

    def summary(self) -> dict[str, Any]:
        stage_us = np.median(self.stage_us, axis=0)
        return {
            "stage_us": stage_us.tolist(),
            "chain_us": np.cumsum(stage_us).tolist(),
            "unsplit_us": float(np.median(self.unsplit_us)) if self.full is not None else None,
            "macs_fraction": self.macs_fraction,
        }

    def close(self) -> None:
        for s in self.stages:
            s.close()
        if self.full is not None:
            self.full.close()


def _interleaved(
    models: dict[str, Any], raw: _Raw, x: np.ndarray, q: np.ndarray, warmup: int
) -> dict[str, dict[str, np.ndarray]]:
    """Per model: wall time (us), reported latency (us), exit, label, and whether the
    bandit's never-stop arm ran (the unsplit model). Every input goes through every model
    and the raw interpreter, in a random order per input."""
    n = len(x)
    out = {
        k: {
            "wall": np.zeros(n),
            "reported": np.zeros(n),
            "exit": np.zeros(n, np.int64),
            "label": np.zeros(n, np.int64),
            "unsplit": np.zeros(n, bool),
        }
        for k in models
    }
    for m in models.values():
        for i in range(min(warmup, n)):
            m.predict(x[i])
    for i in range(min(warmup, n)):
        raw(i, q[i : i + 1])
    keys = [*models, "raw"]
    # A fresh random order per input: a fixed rotation keeps each one after the same
    # neighbour, which biased the before/after ratios here by a few percent.
    orders = np.random.default_rng(0).permuted(np.tile(np.arange(len(keys)), (n, 1)), axis=1)
    clock = time.perf_counter_ns
    for i in range(n):
        xi = x[i]
        for j in orders[i]:
            k = keys[j]
            if k == "raw":
                raw(i, q[i : i + 1])
                continue
            m = models[k]
            t0 = clock()
            p = m.predict(xi)
            t1 = clock()
            rec = out[k]
            rec["wall"][i] = (t1 - t0) / 1e3
            rec["reported"][i] = p.latency_ms * 1e3
            rec["exit"][i] = p.exit
            rec["label"][i] = p.label
            pol = m.policy
            arms = getattr(pol, "arms", None)
            if arms is not None and p.exit == m.n_exits - 1:
                rec["unsplit"][i] = arms[pol.chosen] == NEVER
    return out


def _outside(rec: dict[str, np.ndarray], raw: dict[str, Any], key: str) -> dict[str, float]:
    """Per input, the median time of ``key`` over the inputs that ran the same stages,
    against the interpreter's median raw time for those stages."""
    chain, unsplit = raw["chain_us"], raw["unsplit_us"] or raw["chain_us"][-1]
    total = inside = 0.0
    for e in range(len(chain)):
        for via_unsplit in (False, True):
            sel = (rec["exit"] == e) & (rec["unsplit"] == via_unsplit)
            if not sel.any():
                continue
            cnt = int(sel.sum())
            total += cnt * float(np.median(rec[key][sel]))
            inside += cnt * (unsplit if via_unsplit else chain[e])
    n = len(rec[key])
    return {"median_us": total / n, "interpreter_us": inside / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--before", default=None, help="git revision of the runtime to compare")
    ap.add_argument("-n", type=int, default=3000, help="test images, each through every model")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--out", default="build/bench")
    a = ap.parse_args()
    package = Path(a.package)
    data = load_dataset(a.dataset)
    x = np.round(data.x_test[: a.n] * 255).astype(np.uint8)
    y = np.asarray(data.y_test[: a.n])
    runtimes: dict[str, Any] = {"after": edgekit.runtime}
    if a.before:
        runtimes["before"] = _runtime_at(a.before)
    models = {
        f"{name}/{pol}": rt.load(package, backend="onnxruntime", policy=pol, threads=1)
        for name, rt in runtimes.items()
        for pol in POLICIES
    }
    raw = _Raw(package, len(x))
    try:
        q = models["after/full"].quantize(x)
        recs = _interleaved(models, raw, x, q, a.warmup)
    finally:
        for m in models.values():
            m.close()
        raw.close()
    print(f"{package}: {len(x)} test images, batch 1, 1 thread, onnxruntime, interleaved")
    rows: dict[str, Any] = {}
    for k, rec in recs.items():
        acc = float(np.mean(rec["label"] == y))
        row = {"accuracy": acc, "exit_histogram": np.bincount(rec["exit"]).tolist()}
        for key in ("wall", "reported"):
            row[f"{key}_mean_us"] = float(rec[key].mean())
            row[f"{key}_p50_us"] = float(np.median(rec[key]))
        rows[k] = row
        print(
            f"  {k:<14} accuracy {acc:.4f}  predict wall mean {row['wall_mean_us']:7.1f} "
            f"p50 {row['wall_p50_us']:7.1f} us | reported mean {row['reported_mean_us']:7.1f} "
            f"p50 {row['reported_p50_us']:7.1f} us | exits {row['exit_histogram']}"
        )
    ratios: dict[str, float] = {}
    for name in runtimes:
        b, f = rows[f"{name}/bandit"], rows[f"{name}/full"]
        for stat in ("reported_mean", "reported_p50", "wall_mean", "wall_p50"):
            ratios[f"{name} bandit/full {stat}"] = b[f"{stat}_us"] / f[f"{stat}_us"]
        ratios[f"{name} accuracy loss (points)"] = 100 * (f["accuracy"] - b["accuracy"])
    if a.before:
        for pol in POLICIES:
            for stat in ("reported_p50", "wall_p50", "reported_mean"):
                ratios[f"{pol} after/before {stat}"] = (
                    rows[f"after/{pol}"][f"{stat}_us"] / rows[f"before/{pol}"][f"{stat}_us"]
                )
    for k, v in ratios.items():
        print(f"  {k:<42} {v:7.3f}")
    summary = raw.summary()
    u = summary["unsplit_us"] or summary["chain_us"][-1]
    print(f"interpreter alone (median us): unsplit model {u:.1f}")
    for j, (s, c, mf) in enumerate(
        zip(summary["stage_us"], summary["chain_us"], summary["macs_fraction"])
    ):
        print(
            f"  stage {j}: {s:6.1f} us, stages 0..{j} {c:6.1f} us = {c / u:.3f} of the unsplit "
            f"model's time, at {mf:.3f} of its MACs"
        )
    outside: dict[str, Any] = {}
    for name in runtimes:
        for key in ("reported", "wall"):
            o = _outside(recs[f"{name}/bandit"], summary, key)
            frac = 1.0 - o["interpreter_us"] / o["median_us"]
            outside[f"{name} {key}"] = {**o, "outside_fraction": frac}
            print(
                f"  {name} bandit, {key} latency: {o['median_us']:6.1f} us per input (group "
                f"medians), {o['interpreter_us']:6.1f} us of it in raw interpreter runs: "
                f"{frac:.3f} outside"
            )
        # The mean a CPU of its own would see: each group of inputs at its median.
        typical = outside[f"{name} reported"]["median_us"] / rows[f"{name}/full"]["reported_p50_us"]
        ratios[f"{name} bandit/full reported, group medians"] = typical
        print(f"  {name} bandit/full, reported latency from group medians: {typical:.3f}")
    free = outside["after reported"]["interpreter_us"] / u
    ratios["bandit/full with a zero-cost runtime (raw runs)"] = free
    print(f"  bandit/full with a runtime that cost nothing (raw interpreter runs only): {free:.3f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"package": str(package), "rows": rows, "ratios": ratios, "raw": summary}
    report["outside"] = outside
    (out / "runtime_onnx.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
