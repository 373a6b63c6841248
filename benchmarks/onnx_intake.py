"""ONNX intake benchmark: the PyTorch export as it came (float, onnxruntime) against the
package convert made of it (INT8 stages under the full and the bandit policy), side by side
in one run, batch 1, one thread, interleaved so load changes hit every variant alike.

    python -m benchmarks.onnx_intake --package build/vgg.edgepkg \\
        --model tests/fixtures/torch/fmnist_vgg_legacy.onnx --mean 0.286 --std 0.353 [-n 2000]

Prints accuracy and mean latency per variant and the ratios to the float model; writes
``onnx_intake.json`` and ``onnx_intake.png`` into ``--out``. ``--label-free-package`` adds a
package converted with ``--labels none`` (same model) as two more variants, so heads trained
with and without labels are compared on the same images in the same run; a package converted
with ``--labels both`` has the label-free heads' per-exit accuracy in its report, printed too.
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


def _float_runner(model: str, mean: list[float], std: list[float], layout: str) -> Any:
    import onnxruntime as ort

    from edgekit.runtime.backends.onnxruntime import session_options

    sess = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def run(img: np.ndarray) -> int:
        x = ((img.astype(np.float32) / 255 - m) / s)[None]
        if layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return int(sess.run(None, {name: np.ascontiguousarray(x)})[0].argmax())

    return run


def _print_label_free(report: dict[str, Any]) -> None:
    """The conversion's own per-exit INT8 accuracy, labelled vs label-free heads (a package
    converted with --labels both; its whole test split)."""
    exits = report["exits"]
    if not all("onnx_int8_label_free" in e["accuracy"] for e in exits):
        return
    print("conversion report (--labels both), INT8 test accuracy per exit:")
    for e in exits:
        acc = e["accuracy"]
        print(
            f"  exit {e['index']} ({e['macs_fraction']:.0%} MACs): labelled heads "
            f"{acc['onnx_int8']:.4f}, label-free heads {acc['onnx_int8_label_free']:.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--model", required=True, help="the source .onnx file")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--mean", default="0")
    ap.add_argument("--std", default="1")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument(
        "--label-free-package", help="the same model converted with --labels none (optional)"
    )
    a = ap.parse_args()
    data = load_dataset(a.dataset)
    x = np.round(data.x_test[: a.n] * 255).astype(np.uint8)
    y = data.y_test[: a.n]
    report = json.loads((Path(a.package) / "report.json").read_text())
    layout = report["model"]["layout"]
    mean = [float(v) for v in a.mean.split(",")]
    std = [float(v) for v in a.std.split(",")]
    variants: dict[str, Any] = {"float (source model)": _float_runner(a.model, mean, std, layout)}
    models = {}
    packages = [
        ("INT8 stages, full", a.package, "full"),
        ("INT8 stages, bandit", a.package, "bandit"),
    ]
    if a.label_free_package:
        packages += [
            ("label-free heads, full", a.label_free_package, "full"),
            ("label-free heads, bandit", a.label_free_package, "bandit"),
        ]
    for key, package, policy in packages:
        m = edgekit.load(package, policy=policy, backend="onnxruntime", threads=1)
        models[key] = m
        variants[key] = lambda img, m=m: m.predict(img).label
    times: dict[str, list[float]] = {k: [] for k in variants}
    right: dict[str, int] = dict.fromkeys(variants, 0)
    for i in range(len(x)):
        for k, run in variants.items():
            t = time.perf_counter()
            pred = run(x[i])
            times[k].append(time.perf_counter() - t)
            right[k] += int(pred == y[i])
    base = float(np.mean(times["float (source model)"]))
    base_p50 = float(np.median(times["float (source model)"]))
    rows: list[dict[str, Any]] = []
    print(f"{len(x)} test images, batch 1, 1 thread, interleaved")
    for k in variants:
        mean_ms = 1e3 * float(np.mean(times[k]))
        rows.append(
            {
                "variant": k,
                "accuracy": right[k] / len(x),
                "mean_ms": mean_ms,
                "p50_ms": 1e3 * float(np.median(times[k])),
                "p95_ms": 1e3 * float(np.percentile(times[k], 95)),
                "latency_vs_float": mean_ms / 1e3 / base,
                "p50_vs_float": float(np.median(times[k]) / base_p50),
            }
        )
        r = rows[-1]
        print(
            f"  {k:<24} accuracy {r['accuracy']:.4f}  mean {mean_ms:7.3f} ms "
            f"(x{r['latency_vs_float']:.2f} of float)  p50 {r['p50_ms']:7.3f} ms "
            f"(x{r['p50_vs_float']:.2f})  p95 {r['p95_ms']:7.3f} ms"
        )
    for m in models.values():
        m.close()
    _print_label_free(report)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_intake.json").write_text(json.dumps(rows, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["variant"] for r in rows], [r["mean_ms"] for r in rows])
    for i, r in enumerate(rows):
        ax.annotate(f"{100 * r['accuracy']:.2f}%", (i, r["mean_ms"]), ha="center", va="bottom")
    ax.set_ylabel("mean latency (ms), batch 1")
    ax.set_title("PyTorch export vs edgekit package (onnxruntime)")
    fig.tight_layout()
    fig.savefig(out / "onnx_intake.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
