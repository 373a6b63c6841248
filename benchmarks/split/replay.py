"""The split bandit's choices replayed offline: real exit confidences, modelled costs.

    python -m benchmarks.split.replay --package build/fmnist.edgepkg [--seeds 20]

What ``python -m benchmarks.split`` measures over a shaped link takes minutes and root; the
policies' *choices* (which place, which threshold, how many inputs explored there and at
what cost) do not need the link. This runs every exit of the package on the Fashion-MNIST
test set once (``EdgeModel.run_all_exits``), then feeds the local-only
:class:`BanditPolicy` and the :class:`SplitBanditPolicy` the same stream as the benchmark
does (a warm-up, then the measured inputs), deciding each input as ``EdgeModel`` would:
stop at the first exit whose confidence reaches the threshold, or send the input of the
split stage, which the server answers with the last exit. Costs are fractions of the full
model: the stages' times measured here (times ``--device-slowdown``, as the benchmark
emulates), and a round trip of ``--rtt-ms`` plus the request's bytes at the link rate.
Each seed draws another input order; the costs each policy is told vary by ``--jitter``
(measured latencies do). A second local-only bandit, identical (the *twin*), runs too:
how far two runs of one bandit differ is the floor under any gap between two bandits.
Printed per rate: the split bandit's and the twin's accuracy below the local-only
bandit's, mean costs, and where the split bandit's measured inputs went.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.runtime import NEVER, BanditPolicy, Outcome, Policy, SplitBanditPolicy

HEADER_BYTES = 420  # an infer request's line and headers on the wire (measured: ~400-450)


def exits(pkg: Path, cache: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """(labels [N, E], confidences [N, E], true labels [N], stage ms here) for the test set."""
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return z["labels"], z["confs"], z["y"], z["stage_ms"].tolist()
    import edgekit
    from edgekit.data import load_dataset

    d = load_dataset("fashion-mnist")
    with edgekit.load(pkg, backend="litert", policy="full", threads=1) as m:
        labels, confs = m.run_all_exits(d.x_test)
        stage_ms = [float(t) for t in m.stage_latency_ms(d.x_test[-300:], 300)]
    if cache is not None:
        np.savez(cache, labels=labels, confs=confs, y=d.y_test, stage_ms=np.array(stage_ms))
    return labels, confs, d.y_test, stage_ms


def stream(
    pol: Policy,
    idx: np.ndarray,
    confs: np.ndarray,
    ok: np.ndarray,
    costs: list[float],
    rtt: list[float],
    trace: list[tuple[Any, ...]] | None = None,
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Feed inputs ``idx`` to ``pol`` as the model would; (accuracy, mean cost). With
    ``jitter``, the costs the policy is told vary by that fraction (normal, from ``rng``),
    as measured latencies do; the mean cost returned is the noiseless one."""
    n = len(costs)
    last = n - 1
    right = paid_sum = 0.0
    told = costs
    for i in idx:
        if jitter and rng is not None:
            told = [x * (1.0 + jitter * float(rng.standard_normal())) for x in costs]
        c = confs[i].tolist()
        th, split = pol.select(True)
        s = n if split is None else split
        k = 0
        while k < min(s, last) and c[k] < th[k]:
            k += 1
        if s < n and k == s:  # no exit before the split stopped it: offloaded
            paid = (costs[s - 1] if s else 0.0) + rtt[s]
            said = (told[s - 1] if s else 0.0) + rtt[s]
            pol.observe(Outcome(s - 1, c, told, said, said, s, c[last]))
            k = last
        else:
            paid = costs[k]
            pol.observe(Outcome(k, c, told, told[k], told[k]))
        right += ok[i, k]
        paid_sum += paid
        if trace is not None:
            trace.append((split, th[0], k))
    return right / len(idx), paid_sum / len(idx)


def _split_class(path: str) -> type[Policy]:
    """``SplitBanditPolicy`` of another copy of the module (its relative imports resolve
    against this ``edgekit.runtime``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgekit.runtime._split_bandit_other", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls: type[Policy] = mod.SplitBanditPolicy
    return cls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.split.replay")
    ap.add_argument("--package", default="build/fmnist.edgepkg")
    ap.add_argument("--cache", default=None, help="npz of the exits (written when missing)")
    ap.add_argument("--rates", default="1,10,100", help="Mbit/s")
    ap.add_argument("--rtt-ms", type=float, default=0.6, help="round trip besides the bytes")
    ap.add_argument("--device-slowdown", type=float, default=10.0)
    ap.add_argument("--inputs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--algorithm", default="ucb")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--jitter", type=float, default=0.01, help="noise of the costs told (fraction)")
    ap.add_argument("--json", default=None, help="write the per-seed figures here")
    ap.add_argument(
        "--split-module",
        default=None,
        help="another version of runtime/_split_bandit.py to replay instead (A/B a change)",
    )
    a = ap.parse_args(argv)
    split_cls = _split_class(a.split_module) if a.split_module else SplitBanditPolicy
    pkg = Path(a.package)
    labels, confs, y, stage_ms = exits(pkg, Path(a.cache) if a.cache else None)
    ok = labels == y[:, None]
    man = json.loads((pkg / "manifest.json").read_text())
    tensor = [int(np.prod(s["input"]["shape"][1:])) for s in man["stages"]]
    ms = [t * a.device_slowdown for t in stage_ms]
    full = sum(ms)
    costs = [sum(ms[: k + 1]) / full for k in range(len(ms))]
    print(
        f"stages {'/'.join(f'{t:.3f}' for t in ms)} ms (x{a.device_slowdown:g}), costs "
        f"{'/'.join(f'{c:.2f}' for c in costs)}; {a.algorithm}, lam {a.lam:g}, "
        f"{a.warmup} warm-up + {a.inputs} measured, {a.seeds} input orders"
    )
    out: dict[str, Any] = {}
    for rate in (float(r) for r in a.rates.split(",")):
        rtt = [(a.rtt_ms + (b + HEADER_BYTES) * 8e-3 / rate) / full for b in tensor]
        fig: dict[str, list[float]] = {k: [] for k in ("acc", "acc_twin", "acc_split",
                                                       "cost", "cost_split")}  # fmt: skip
        where: Counter[tuple[Any, Any]] = Counter()
        warm_off = []
        for seed in range(a.seeds):
            order = np.random.default_rng(seed).permutation(len(y))
            warm, meas = order[: a.warmup], order[a.warmup : a.warmup + a.inputs]
            kw: dict[str, Any] = {"algorithm": a.algorithm, "lam": a.lam}
            trace: list[tuple[Any, ...]] = []
            warm_trace: list[tuple[Any, ...]] = []
            res = []
            pols = (BanditPolicy(**kw), BanditPolicy(**kw), split_cls(**kw))
            for j, pol in enumerate(pols):
                rng = np.random.default_rng([seed, j])  # each its own measurement noise
                pol.bind(len(ms), costs)
                tr, wtr = (trace, warm_trace) if j == 2 else (None, None)
                stream(pol, warm, confs, ok, costs, rtt, wtr, a.jitter, rng)
                res.append(stream(pol, meas, confs, ok, costs, rtt, tr, a.jitter, rng))
            fig["acc"].append(res[0][0])
            fig["acc_twin"].append(res[1][0])
            fig["acc_split"].append(res[2][0])
            fig["cost"].append(res[0][1])
            fig["cost_split"].append(res[2][1])
            where.update((sp, "never" if t == NEVER else t) for sp, t, _ in trace)
            warm_off.append(sum(sp is not None for sp, _, _ in warm_trace))
        line = [f"  {rate:g} Mbit/s (round trips {'/'.join(f'{r:.2f}' for r in rtt)} x full):"]
        for name in ("split", "twin"):
            g = [100.0 * (x - z) for x, z in zip(fig["acc"], fig[f"acc_{name}"])]
            line.append(
                f"    {name:<5} accuracy below the local-only bandit's (points): median "
                f"{statistics.median(g):.2f}, max {max(g):.2f}, > 0.5 in "
                f"{sum(x > 0.5 for x in g)}/{len(g)}"
            )
        line.append(
            f"    accuracy: local-only {statistics.mean(fig['acc']):.4f}, split "
            f"{statistics.mean(fig['acc_split']):.4f}; cost split / local-only "
            f"{statistics.mean(fig['cost_split']) / statistics.mean(fig['cost']):.3f}; "
            f"warm-up inputs sent towards a split: median {statistics.median(warm_off):g}"
        )
        print("\n".join(line))
        top = ", ".join(f"{sp if sp is not None else 'here'}@{t}: {c}" for (sp, t), c in
                        where.most_common(8))  # fmt: skip
        print(f"    split bandit's measured inputs (place@threshold: count, all seeds): {top}")
        out[f"{rate:g}"] = fig
    if a.json:
        Path(a.json).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
