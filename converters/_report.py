"""What convert measured, as ``report.json``, ``report.md`` and ``plots/*.png``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgekit._package import Manifest
from edgekit.data import Dataset

__all__ = ["dataset_entry", "exit_entries", "format_table", "stage_rows", "write_report"]

_FORMATS = (
    ("float", "float"),
    ("tflite_int8", "TFLite INT8"),
    ("onnx_int8", "ONNX INT8"),
    # ONNX intake with labels="both": the label-free comparison heads (not in the package)
    ("float_label_free", "float, label-free heads"),
    ("onnx_int8_label_free", "ONNX INT8, label-free heads"),
)


def dataset_entry(data: Dataset) -> dict[str, Any]:
    """The report's ``dataset``: what was trained and validated on."""
    return {
        "description": data.describe(),
        "name": data.name,
        "input_shape": list(data.input_shape),
        "classes": data.num_classes,
        "train": len(data.x_train),
        "val": len(data.x_val),
        "test": len(data.x_test),
        "notes": list(data.notes),
    }


def exit_entries(manifest: Manifest, accuracy: list[dict[str, float]]) -> list[dict[str, Any]]:
    """The report's ``exits``: where each one sits, its MACs and its accuracy per format."""
    return [
        {
            "index": i,
            "layer": e.layer,
            "stage": e.stage,
            "macs": e.macs,
            "macs_fraction": e.macs_fraction,
            "accuracy": accuracy[i],
        }
        for i, e in enumerate(manifest.exits)
    ]


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def _kib(v: Any) -> str:
    return f"{v / 1024:.1f} KiB" if isinstance(v, (int, float)) else "-"


def _onnx_act(act: str | None) -> str:
    if act == "uint8":  # the manifest's stage quantization is the int8 contract
        return (
            "uint8 in the ONNX files (manifest.json gives the stages' quantization in int8 "
            "terms, the same grid: uint8 value = int8 value + 128, zero point too)"
        )
    return act or "-"


def format_table(report: dict[str, Any]) -> str:
    """The per-exit table and the headline checks, as Markdown."""
    fmts = [(k, t) for k, t in _FORMATS if any(k in e["accuracy"] for e in report["exits"])]
    head = "| exit | layer | MACs | MACs fraction | " + " | ".join(t for _, t in fmts) + " |"
    lines = [head, "|" + "---|" * (4 + len(fmts))]
    for e in report["exits"]:
        accs = " | ".join(_pct(e["accuracy"].get(k)) for k, _ in fmts)
        lines.append(
            f"| {e['index']} | {e['layer']} | {e['macs'] / 1e6:.2f} M | "
            f"{e['macs_fraction']:.3f} | {accs} |"
        )
    lines.append("")
    lines.append(
        "| format | float bytes | INT8 stages bytes | INT8 unsplit bytes | stages / float |"
    )
    lines.append("|---|---|---|---|---|")
    for fmt, s in report["sizes"].items():
        ratio = s["int8"] / s["float"] if s.get("float") else None
        lines.append(
            f"| {fmt} | {_kib(s.get('float'))} | {_kib(s.get('int8'))} | "
            f"{_kib(s.get('int8_unsplit'))} | {_pct(ratio)} |"
        )
    lines.append("")
    ag = report.get("agreement", {})
    for key, text in (
        ("tflite_chain_vs_unsplit", "TFLite chained stages vs unsplit (top-1)"),
        ("onnx_chain_vs_unsplit", "ONNX chained stages vs unsplit (top-1)"),
        ("tflite_vs_onnx", "TFLite INT8 vs ONNX INT8 (top-1, final exit)"),
    ):
        if key in ag:
            lines.append(f"- {text}: {_pct(ag[key])}")
    placed = report.get("exit_placement") or {}
    if placed.get("by") == "latency":
        timed = ", ".join(
            f"{c['layer']} {c['latency_us']:.0f} us ({c['latency_fraction']:.0%})"
            for c in placed["candidates"]
        )
        lines.append(
            f"- exits placed by INT8 latency measured on {placed['host']} "
            f"({placed['threads']} thread): backbone {placed['backbone_us']:.0f} us; {timed}"
        )
    for c in report.get("float_stem") or []:
        state = "float" if c["used"] else "INT8"
        lines.append(
            f"- first conv ({c['layer']}), {c['format']}: {state} ({c['reason']}); stage 0 "
            f"{c['int8_us']:.1f} us all INT8, {c['float_us']:.1f} us with the first conv in "
            "float, measured on the converting host"
        )
    if report.get("notes"):
        lines.extend(f"- note: {n}" for n in report["notes"])
    return "\n".join(lines)


def stage_rows(root: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """The report's per-stage rows: MACs, bytes per format and the input quantization."""
    return [
        {
            "index": s.index,
            "macs": s.macs,
            "bytes": {f: (root / p).stat().st_size for f, p in s.files.items()},
            "input_quant": dataclasses.asdict(s.input.quant) if s.input.quant else None,
        }
        for s in manifest.stages
    ]


def write_report(root: Path, report: dict[str, Any]) -> None:
    """Write report.json, report.md and the plots into the package folder ``root``."""
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        f"# edgekit conversion report: {report['name']}",
        "",
        f"- dataset: {report['dataset']['description']}",
        f"- model: {report['model']['source']} ({report['model']['macs'] / 1e6:.2f} M MACs "
        f"with exits)",
        f"- quantization: {report['quantization']}; ONNX activations: "
        f"{_onnx_act(report.get('onnx_activation_type'))}",
        f"- conversion time: {report['timing']['total_seconds']:.0f} s",
        "",
        format_table(report),
        "",
    ]
    md.extend(_target_lines(report.get("targets") or {}))
    plots = _plots(root, report)
    md.extend(f"![{p.stem}](plots/{p.name})" for p in plots)
    (root / "report.md").write_text("\n".join(md) + "\n")


def _target_lines(targets: dict[str, Any]) -> list[str]:
    """The accelerator sections (``--target coral`` / ``jetson``) of report.md."""
    md: list[str] = []
    coral = targets.get("coral")
    if coral:
        md += ["## Coral Edge TPU (checked against the published constraints, not compiled)", ""]
        for st in coral["stages"]:
            md.append(f"- {st['name']}: {st['on_edgetpu']}/{st['ops']} ops on the Edge TPU")
            md += [f"  - {p}" for p in st["problems"]]
            md += [
                f"  - CPU: op {c['index']} {c['op']} v{c['version']}: {c['reason']}"
                for c in st["cpu_ops"]
            ]
        md += ["", f"Still needed: {coral['needs']}", ""]
    jetson = targets.get("jetson")
    if jetson:
        form = (
            "FP16 stages: float16 inside, int8 stage I/O"
            if jetson.get("precision") == "fp16"
            else "TensorRT explicit quantization"
        )
        md += [f"## Jetson ({form})", ""]
        md += [f"- {line}" for line in jetson.get("lines", [])]
        md.append("")
    return md


def _plots(root: Path, report: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = root / "plots"
    out.mkdir(exist_ok=True)
    paths = []
    exits = report["exits"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [e["macs_fraction"] for e in exits]
    for key, title in _FORMATS:
        ys = [e["accuracy"].get(key) for e in exits]
        if all(v is not None for v in ys):
            ax.plot(xs, [100 * v for v in ys], marker="o", label=title)
    for e in exits:
        ax.annotate(
            f"exit {e['index']}",
            (e["macs_fraction"], 100 * e["accuracy"]["float"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    ax.set_xlabel("cumulative MACs (fraction of the full model)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy and cost per exit")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "accuracy_cost.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    fmts = list(report["sizes"])
    width = 0.35
    for j, (kind, title) in enumerate((("float", "float"), ("int8", "INT8 stages"))):
        vals = [report["sizes"][f].get(kind, 0) / 1024 for f in fmts]
        ax.bar([i + (j - 0.5) * width for i in range(len(fmts))], vals, width, label=title)
    ax.set_xticks(range(len(fmts)), fmts)
    ax.set_ylabel("KiB")
    ax.set_title("artifact size, float vs INT8")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "sizes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    hist = report.get("training", {}).get("history") or []
    if hist:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        n = len(exits)
        for i in range(n):
            key = f"val_acc_exit{i}"
            ax.plot(
                [h["epoch"] for h in hist],
                [100 * h.get(key, 0) for h in hist],
                marker=".",
                label=f"exit {i}",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "training.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
