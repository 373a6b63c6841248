"""The ``edgekit`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._errors import EdgekitError

__all__ = ["main"]


def _parse_exits(text: str | None) -> tuple[float, ...] | tuple[str, ...] | None:
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        return tuple(parts)


def _cmd_convert(args: argparse.Namespace) -> int:
    from edgekit.converters import ConvertOptions, convert

    opts = ConvertOptions(
        model=args.model,
        exits=_parse_exits(args.exits),
        train=args.train,
        quant=args.quant,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        target=args.target,
        exit_weights=tuple(float(w) for w in args.exit_weights.split(","))
        if args.exit_weights
        else None,
        epochs=args.epochs,
        qat_epochs=args.qat_epochs,
        batch_size=args.batch_size,
        width=args.width,
        calibration_size=args.calibration_size,
        name=args.name,
        fast=args.fast,
        force=args.force,
        seed=args.seed,
        verbose=not args.quiet,
    )
    result = convert(args.dataset, args.out, options=opts)
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print(result.table())
        print(f"\nwrote {result.path} (report: {result.path / 'report.md'})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from edgekit._package import read_manifest

    from .converters._report import format_table

    read_manifest(args.package, verify=not args.no_verify)
    report = json.loads((Path(args.package) / "report.json").read_text())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"# {report['name']}: {report['dataset']['description']}\n")
        print(format_table(report))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from edgekit._package import read_manifest

    m = read_manifest(args.package)
    print(
        f"{args.package}: ok ({len(m.files)} files, {len(m.stages)} stages, "
        f"{len(m.exits)} exits, schema {m.schema_version})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgekit",
        description="Deploy neural networks to edge devices as multi-exit INT8 packages.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "convert",
        help="convert a model into an edge package",
        description="Train exits, quantize to INT8, cut into stages, export "
        "TFLite and ONNX, validate, and write NAME.edgepkg.",
    )
    c.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="fashion-mnist[:DIR], digits, an image folder, or a .npz file",
    )
    c.add_argument("--out", required=True, help="output package folder (NAME.edgepkg)")
    c.add_argument(
        "--model", help="tf-keras model file (.keras/.h5/SavedModel); default: the built-in CNN"
    )
    c.add_argument("--exits", help="MAC fractions (0.12,0.4,0.6) or layer names")
    c.add_argument(
        "--train",
        default="auto",
        choices=["auto", "joint", "heads", "none"],
        help="joint: backbone and heads; heads: frozen backbone (auto: joint for "
        "the built-in model, heads for --model)",
    )
    c.add_argument("--quant", default="qat", choices=["qat", "ptq"])
    c.add_argument("--formats", default="tflite,onnx", help="tflite,onnx")
    c.add_argument(
        "--target",
        default="auto",
        choices=["auto", "x86", "arm"],
        help="ONNX activation type: uint8 for x86, int8 for ARM",
    )
    c.add_argument("--epochs", type=int, help="training epochs (default 7; 3 with --fast)")
    c.add_argument(
        "--qat-epochs",
        type=float,
        default=0.5,
        help="QAT fine-tuning, in epochs (fractions allowed)",
    )
    c.add_argument("--exit-weights", help="loss weight per exit, final last (0.3,0.4,0.6,1)")
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--width", type=int, default=32, help="width of the built-in CNN")
    c.add_argument("--calibration-size", type=int, default=500)
    c.add_argument("--name", help="package name (default: from --out)")
    c.add_argument("--fast", action="store_true", help="small, quick run (tests, smoke checks)")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print report.json instead of a table")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=_cmd_convert)

    r = sub.add_parser("report", help="print a package's conversion report")
    r.add_argument("package")
    r.add_argument("--json", action="store_true")
    r.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    r.set_defaults(func=_cmd_report)

    v = sub.add_parser("verify", help="check every file of a package against its sha256")
    v.add_argument("package")
    v.set_defaults(func=_cmd_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EdgekitError as exc:
        print(f"edgekit: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted; nothing was written to the output folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
