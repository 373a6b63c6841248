"""The benchmark's figures: latency per link setting and bytes per offload (split.png),
and the offloaded share after the link drops (drift.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_plots(out: Path, result: dict[str, Any], rates: list[float], cols: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ys = [result["settings"][f"{r:g}"]["policies"][c]["mean_ms"] for r in rates]
        ax.bar(np.arange(len(rates)) + j * width, ys, width, label=c)
    ax.set_xticks(np.arange(len(rates)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{r:g} Mbit/s" for r in rates])
    ax.set_yscale("log")
    ax.set_ylabel("mean latency per input (ms, log)")
    ax.set_title(f"device {result['device_slowdown']:g}x slower than host, tc tbf")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    by = result["bytes"]
    names = ["raw input", "PNG", "zlib"] + [
        f"split {s}" for s, b in enumerate(by["request_bytes_by_split"]) if b is not None
    ]
    vals = [by["raw_bytes"], by["png_bytes"], by["zlib_bytes"]] + [
        b for b in by["request_bytes_by_split"] if b is not None
    ]
    ax.bar(names, vals, color=["0.5"] * 3 + ["C0"] * (len(vals) - 3))
    ax.set_ylabel("bytes per input (requests: on the wire, compressed)")
    ax.set_title("what an offload sends")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "split.png", dpi=110)
    plt.close(fig)
    d = result.get("drift")
    if d:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        w = d["windows"]
        ax.plot([x["start"] for x in w], [x["offloaded"] for x in w], marker="o")
        ax.set_xlabel(f"input after the link dropped {d['from_mbit']:g} -> {d['to_mbit']:g} Mbit/s")
        ax.set_ylabel("offloaded share (per 100)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)
