"""Architecture matrix: which Keras models convert, with which exits, and how well INT8 agrees.

``python -m benchmarks.arch_matrix --out build/arch`` builds every ``tf_keras.applications``
family that builds at a small input (``weights=None``) plus hand-written Sequential and
Functional CNNs, saves each to a file, and runs ``edgekit convert`` on it the way a user
would (defaults, and ``--quant ptq``; heads and joint training). Every row runs in its own
process with a time limit, so one model that hangs or crashes costs only its row. Writes
``arch_matrix.json`` and ``arch_matrix.md`` (rewritten after every row, so a run cut short
still leaves a table). Not part of CI: a full run takes hours on 2 cores; ``--only`` and
``--modes`` bound it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# name -> (tf_keras.applications attribute, extra keyword arguments, input side).
APPLICATIONS: dict[str, tuple[str, dict[str, Any], int]] = {
    "MobileNet": ("MobileNet", {"alpha": 0.25}, 32),
    "MobileNetV2": ("MobileNetV2", {"alpha": 0.35}, 32),
    "MobileNetV3Small": ("MobileNetV3Small", {}, 40),
    "MobileNetV3Large": ("MobileNetV3Large", {}, 40),
    "EfficientNetB0": ("EfficientNetB0", {}, 32),
    "EfficientNetV2B0": ("EfficientNetV2B0", {}, 32),
    "ResNet50V2": ("ResNet50V2", {}, 32),
    "DenseNet121": ("DenseNet121", {}, 32),
    "NASNetMobile": ("NASNetMobile", {}, 32),
    "RegNetX002": ("RegNetX002", {}, 32),
    "ConvNeXtTiny": ("ConvNeXtTiny", {}, 32),
}
HANDWRITTEN = ("seq_fused", "seq_bn", "func_rescaling_bn", "func_residual_fused")
# (label, convert keyword arguments): the defaults first.
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "ptq": {"quant": "ptq"},
    "joint": {"train": "joint"},
    "ptq-joint": {"quant": "ptq", "train": "joint"},
}
CLASSES = 3


def _handwritten(name: str, side: int) -> Any:
    import tf_keras as k  # the Keras 2 that convert takes (TF_USE_LEGACY_KERAS is set above)

    layers = k.layers
    inp = k.Input((side, side, 3))
    if name == "seq_fused":  # every conv carries its activation, preprocessing in front
        return k.Sequential(
            [
                inp,
                layers.Rescaling(1 / 255.0),
                layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
                layers.Conv2D(32, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(),
                layers.Conv2D(64, 3, padding="same", activation="relu"),
                layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
                layers.Flatten(),
                layers.Dense(64, activation="relu"),
                layers.Dense(CLASSES, activation="softmax"),
            ]
        )
    if name == "seq_bn":
        blocks: list[Any] = [inp]
        for ch, st in ((16, 2), (32, 1), (64, 2), (64, 1)):
            blocks += [
                layers.Conv2D(ch, 3, strides=st, padding="same", use_bias=False),
                layers.BatchNormalization(),
                layers.ReLU(),
            ]
        blocks += [layers.GlobalAveragePooling2D(), layers.Dense(CLASSES, activation="softmax")]
        return k.Sequential(blocks)
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    if name == "func_rescaling_bn":
        for ch in (16, 32, 64):
            x = layers.Conv2D(ch, 3, strides=2, padding="same")(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
    else:  # func_residual_fused
        x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
        for _ in range(3):
            y = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
            y = layers.Conv2D(32, 3, padding="same")(y)
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, layers.Dense(CLASSES, activation="softmax")(x))


def _build(name: str, path: Path) -> int:
    """Build model ``name``, save it to ``path``; returns the input side."""
    import tf_keras

    if name in APPLICATIONS:
        attr, extra, side = APPLICATIONS[name]
        build = getattr(tf_keras.applications, attr)
        model = build(weights=None, input_shape=(side, side, 3), classes=CLASSES, **extra)
    else:
        side = 32
        model = _handwritten(name, side)
    model.save(path)
    return side


def _dataset(path: Path, side: int, n: int) -> Path:
    """A .npz of images whose class is a bright quadrant plus noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, n)
    x = rng.random((n, side, side, 3)).astype(np.float32) * 0.3
    h = side // 2
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, r * h : (r + 1) * h, q * h : (q + 1) * h] += 0.6
    np.savez(path, x=(np.clip(x, 0, 1) * 255).astype(np.uint8), y=y)
    return path


def _row(name: str, mode: str, work: Path, images: int) -> dict[str, Any]:
    """One conversion in this process (run by the parent in a subprocess)."""
    from edgekit import EdgekitError
    from edgekit.converters import convert

    work.mkdir(parents=True, exist_ok=True)
    model_path = work / f"{name}.keras"
    side = _build(name, model_path)
    data = _dataset(work / f"data{side}.npz", side, images)
    out = work / f"{name}-{mode}.edgepkg"
    t = time.monotonic()
    row: dict[str, Any] = {"model": name, "mode": mode, "input": side}
    try:
        res = convert(
            str(data),
            out,
            model=str(model_path),
            epochs=1,
            force=True,
            verbose=False,
            **MODES[mode],
        )
    except EdgekitError as exc:
        row.update(ok=False, error=f"{type(exc).__name__}: {exc.message}", hint=exc.hint)
        return row
    rep = res.report
    agree = rep["agreement"]
    row.update(
        ok=True,
        macs=rep["model"]["macs"],
        exits=[f"{e['layer']} ({e['macs_fraction']:.0%})" for e in rep["exits"][:-1]],
        quantization=rep["quantization"],
        qat_fallback=rep.get("qat_fallback"),
        missing=rep["formats"]["missing"],
        tflite_vs_onnx=agree.get("tflite_vs_onnx"),
        tflite_chain_vs_unsplit=agree.get("tflite_chain_vs_unsplit"),
        onnx_chain_vs_unsplit=agree.get("onnx_chain_vs_unsplit"),
        seconds=round(time.monotonic() - t, 1),
    )
    return row


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The matrix as a Markdown table."""
    head = (
        "| model | mode | input | exits placed | quantization | TFLite vs ONNX | "
        "chained vs unsplit (TFLite / ONNX) | convert s | notes |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if not r.get("ok"):
            err = (r.get("error") or "?").replace("|", "/").replace("\n", " ")[:200]
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['input']} | - | - | - | - | - | "
                f"**failed**: {err} |"
            )
            continue
        q = r["quantization"].upper()
        note = []
        if r.get("qat_fallback"):
            q += " (QAT fell back)"
            note.append(r["qat_fallback"].replace("|", "/")[:160])
        for fmt, why in (r.get("missing") or {}).items():
            note.append(f"no {fmt}: {why[:120]}")
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['input']} | {len(r['exits'])}: "
            f"{', '.join(r['exits'])} | {q} | {_pct(r['tflite_vs_onnx'])} | "
            f"{_pct(r['tflite_chain_vs_unsplit'])} / {_pct(r['onnx_chain_vs_unsplit'])} | "
            f"{r['seconds']:.0f} | {'; '.join(note)} |"
        )
    return head + "\n".join(lines) + "\n"


# How README's "What converts" table names each mode.
README_MODES = {
    "default": "defaults (QAT, heads)",
    "ptq": "`--quant ptq` (PTQ, heads)",
    "joint": "`--train joint` (QAT, joint)",
    "ptq-joint": "`--quant ptq --train joint`",
}


def readme_table(rows: list[dict[str, Any]]) -> str:
    """The matrix as the rows of README's "What converts" table (no header)."""
    lines = []
    for r in rows:
        label = (
            f"{r['model']} ({r['input']}x{r['input']}) | {README_MODES.get(r['mode'], r['mode'])}"
        )
        if not r.get("ok"):
            err = (r.get("error") or "?").replace("|", "/").replace("\n", " ")[:200]
            lines.append(f"| {label} | **failed**: {err} | - | - | - | - |")
            continue
        q = r["quantization"].upper() + (" (QAT fell back)" if r.get("qat_fallback") else "")
        missing = "".join(f"; no {fmt}" for fmt in r.get("missing") or {})
        lines.append(
            f"| {label} | {len(r['exits'])}: {', '.join(r['exits'])} | {q}{missing} | "
            f"{_pct(r['tflite_vs_onnx'])} | {_pct(r['tflite_chain_vs_unsplit'])} / "
            f"{_pct(r['onnx_chain_vs_unsplit'])} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/arch")
    ap.add_argument("--only", help="comma-separated model names (default: all)")
    ap.add_argument("--modes", default="default,ptq-joint", help=f"of {','.join(MODES)}")
    ap.add_argument("--images", type=int, default=150, help="images in the synthetic set")
    ap.add_argument("--row-timeout", type=float, default=900.0, help="seconds per row")
    ap.add_argument("--budget", type=float, default=None, help="stop starting rows after S s")
    ap.add_argument(
        "--merge", nargs="+", metavar="DIR", help="combine the tables of earlier runs (shards)"
    )
    ap.add_argument("--row", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for d in args.merge:  # later shards win for the same (model, mode)
            shard = Path(d) / "arch_matrix.json"
            if not shard.is_file():
                print(f"skipping {d}: no arch_matrix.json (no row finished there yet)")
                continue
            for r in json.loads(shard.read_text()):
                merged[(r["model"], r["mode"])] = r
        order = {n: i for i, n in enumerate([*HANDWRITTEN, *APPLICATIONS])}
        mode_order = {m: i for i, m in enumerate(MODES)}  # default, ptq, joint, ptq-joint
        joined = sorted(
            merged.values(),
            key=lambda r: (order.get(r["model"], 99), mode_order.get(r["mode"], 99)),
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "arch_matrix.json").write_text(json.dumps(joined, indent=2))
        (out / "arch_matrix.md").write_text(markdown(joined))
        (out / "arch_matrix_readme.md").write_text(readme_table(joined))
        print(markdown(joined))
        return 0
    if args.row:
        row = _row(args.row[0], args.row[1], out / "work", args.images)
        print("ROW " + json.dumps(row))
        return 0
    names = args.only.split(",") if args.only else [*HANDWRITTEN, *APPLICATIONS]
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES] + [
        n for n in names if n not in APPLICATIONS and n not in HANDWRITTEN
    ]
    if bad:
        ap.error(f"unknown model or mode: {bad}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    todo = [(n, m) for m in modes for n in names]  # every model gets its first mode first
    for i, (name, mode) in enumerate(todo):
        if args.budget is not None and time.monotonic() - start > args.budget:
            print(f"budget spent: {len(todo) - i} rows not run", flush=True)
            break
        print(f"[{i + 1}/{len(todo)}] {name} {mode} ...", flush=True)
        rows.append(_subprocess_row(name, mode, args, out))
        r = rows[-1]
        print(
            f"    {'ok' if r.get('ok') else 'FAILED'} {r.get('seconds', '')} s "
            f"{r.get('exits', r.get('error', ''))}",
            flush=True,
        )
        (out / "arch_matrix.json").write_text(json.dumps(rows, indent=2))
        (out / "arch_matrix.md").write_text(markdown(rows))
    print(markdown(rows))
    print(f"wrote {out / 'arch_matrix.json'} and {out / 'arch_matrix.md'} ({len(rows)} rows)")
    return 0


def _subprocess_row(name: str, mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.arch_matrix",
        "--out",
        str(out),
        "--images",
        str(args.images),
        "--row",
        name,
        mode,
    ]
    t = time.monotonic()
    base: dict[str, Any] = {"model": name, "mode": mode, "input": _side(name)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
        return {**base, "ok": False, "error": f"no result within {args.row_timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            row: dict[str, Any] = json.loads(line[4:])
            return row
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {
        **base,
        "ok": False,
        "seconds": round(time.monotonic() - t, 1),
        "error": f"crashed (exit {proc.returncode}): {tail[:300]}",
    }


def _side(name: str) -> int:
    return APPLICATIONS[name][2] if name in APPLICATIONS else 32


if __name__ == "__main__":
    sys.exit(main())
