"""The ``edgekit`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import EdgekitError

__all__ = ["main"]

_PLUGINS = ("edgekit.serve._cli", "edgekit.devices.cli")


def _parse_exits(text: str | None) -> tuple[float, ...] | tuple[str, ...] | None:
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        return tuple(parts)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number or comma-separated numbers (e.g. 0.485,0.456,0.406)"
        ) from None


def _cmd_convert(args: argparse.Namespace) -> int:
    from edgekit.converters import ConvertOptions, convert

    opts = ConvertOptions(
        model=args.model,
        exits=_parse_exits(args.exits),
        place_exits=args.place_exits,
        float_stem=args.float_stem,
        train=args.train,
        quant=args.quant,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        target=args.target,
        jetson_precision=args.jetson_precision,
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
        keep_work=args.keep_work,
        seed=args.seed,
        verbose=not args.quiet,
        layout=args.layout,
        mean=args.mean,
        std=args.std,
        labels=args.labels,
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


def _test_split(spec: str, limit: int | None) -> tuple[Any, Any]:
    from edgekit.data import load_dataset

    d = load_dataset(spec)
    x, y = d.x_test, d.y_test
    return (x[:limit], y[:limit]) if limit else (x, y)


def _cmd_eval(args: argparse.Namespace) -> int:
    import edgekit
    from edgekit.evaluate import evaluate, fixed_threshold_sweep

    x, y = _test_split(args.dataset, args.limit)
    opts: dict[str, Any] = {}
    if args.lam is not None:
        opts["lam"] = args.lam
    if args.budget_ms is not None:
        opts["budget_ms"] = args.budget_ms
    if args.offload:
        opts.update(offload=args.offload, offload_token=args.offload_token)
    with edgekit.load(
        args.package,
        backend=args.backend,
        policy=args.policy,
        threads=args.threads,
        state=args.state,
        **opts,
    ) as model:
        res = evaluate(model, x, y, verbose=not args.json)
    rec = res.pop("recording")
    if args.record:
        rec.save(args.record)
    sweep = fixed_threshold_sweep(rec)
    if args.plots:
        from edgekit.evaluate import plot_eval

        points = {res["policy"]: res, "full": res["full_model"], "oracle": res["oracle"]}
        res["plots"] = [
            str(p) for p in plot_eval(Path(args.plots), sweep, points, res["exit_histogram"])
        ]
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        full, orc, lat = res["full_model"], res["oracle"], res["latency_ms"]
        print(f"{res['inputs']} test inputs, one at a time, {res['backend']}:")
        print(f"  {'':<16} {'accuracy':>9} {'cost':>7} {'mean ms':>9}")
        print(
            f"  {res['policy']:<16} {res['accuracy']:>9.4f} {res['mean_cost_fraction']:>7.3f} "
            f"{lat['mean']:>9.4f}   (MACs {res['mean_macs_fraction']:.3f}, p50 "
            f"{lat['p50']:.4f} ms, p99 {lat['p99']:.4f} ms)"
        )
        print(
            f"  {'full model':<16} {full['accuracy']:>9.4f} {1.0:>7.3f} "
            f"{full['mean_latency_ms']:>9.4f}   (all stages)"
        )
        print(
            f"  {'oracle':<16} {orc['accuracy']:>9.4f} {orc['mean_cost_fraction']:>7.3f} "
            f"{orc['mean_latency_ms']:>9.4f}   (earliest exit agreeing with the last)"
        )
        print(f"  exits taken: {res['exit_histogram']}")
        off = res.get("offload")
        if off:
            print(f"  offload: {json.dumps(off)}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edgekit.evaluate import Recording, fixed_threshold_sweep, oracle_point, replay

    rec = Recording.load(args.recording)
    if args.repeat > 1:
        import numpy as np

        rng = np.random.default_rng(args.seed)
        rec = rec.subset(np.concatenate([rng.permutation(len(rec.y)) for _ in range(args.repeat)]))
    results = []
    curves = {}
    for pol in args.policy:
        opts: dict[str, Any] = {}
        if pol.startswith("bandit"):
            opts = {"lam": args.lam}
        r = replay(rec, pol, cost=args.cost, **opts)
        s = r.summary(skip=args.skip)
        s["seconds"] = round(r.seconds, 3)
        results.append(s)
        if "arm_history" in r.extra:
            from edgekit.evaluate import regret_curve

            curves[s["policy"]] = regret_curve(rec, r, args.lam, args.cost)
            s["final_regret"] = float(curves[s["policy"]][-1])
    out = {
        "inputs": len(rec.y),
        "policies": results,
        "oracle": oracle_point(rec, args.cost),
        "fixed_thresholds": fixed_threshold_sweep(rec, cost=args.cost),
    }
    if args.plots and curves:
        from edgekit.evaluate import plot_regret

        out["plots"] = [str(plot_regret(Path(args.plots) / "regret.png", curves))]
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        for s in results:
            print(
                f"{s['policy']:>18}: accuracy {s['accuracy']:.4f}  cost "
                f"{s['mean_cost_fraction']:.3f}  exits {s['exit_histogram']}"
                + (f"  regret {s['final_regret']:.1f}" if "final_regret" in s else "")
            )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.targets:
        from edgekit.devices.cli import remote_bench

        try:
            xs, _ = _test_split(args.dataset, args.n)
        except EdgekitError:
            xs = None  # the device benchmarks on random images of the package's input shape
        return remote_bench(args, xs)
    from edgekit.evaluate import bench

    x, _ = _test_split(args.dataset, args.n)
    res = bench(
        args.package, x, backend=args.backend, threads=args.threads, n=args.n, verbose=not args.json
    )
    from edgekit.runtime.backends.onnxruntime import stage_providers

    if stage_providers():  # which execution provider ran each ONNX stage
        res["providers"] = stage_providers()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:>24}: {v}")
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
        "--model",
        help="tf-keras model file (.keras/.h5/SavedModel) or ONNX (.onnx, e.g. from PyTorch); "
        "default: the built-in CNN",
    )
    c.add_argument("--exits", help="MAC fractions (0.12,0.4,0.6) or layer names")
    c.add_argument(
        "--place-exits",
        default="macs",
        choices=["macs", "latency"],
        help="match --exits fractions against MACs, or against INT8 latency measured on this "
        "host (slower convert; report.json records the measurements)",
    )
    c.add_argument(
        "--float-stem",
        default="auto",
        choices=["auto", "measured", "off"],
        help="the first conv (<= 4 input channels) in float: auto (always, same outputs "
        "checked), measured (only where stage 0 is faster so on this host), off (all INT8)",
    )
    c.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "NCHW", "NHWC"],
        help=".onnx models: the input layout (auto: from the input shape)",
    )
    c.add_argument(
        "--mean",
        type=_float_list,
        help=".onnx models: input mean per channel, pixel/255 units (0.485,0.456,0.406); "
        "default: the model's metadata_props, else 0",
    )
    c.add_argument(
        "--std", type=_float_list, help=".onnx models: input std per channel (as --mean)"
    )
    c.add_argument(
        "--labels",
        default="auto",
        choices=["auto", "none", "both"],
        help=(
            ".onnx models: none trains the exits on the model's own logits (no labels); "
            "both keeps the labelled heads and reports the label-free heads' accuracy beside them"
        ),
    )
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
        choices=["auto", "x86", "arm", "coral", "jetson"],
        help="ONNX activation type: uint8 for x86, int8 for ARM; coral: stages checked for "
        "the Edge TPU (README 'Coral'); jetson: TensorRT-ready ONNX (README 'Jetson')",
    )
    c.add_argument(
        "--jetson-precision",
        default="int8",
        choices=["int8", "fp16"],
        help="--target jetson: int8 (symmetric Q/DQ, default) or fp16 ONNX stages (float16 "
        "inside, the same int8 stage I/O)",
    )
    c.add_argument("--epochs", type=int, help="training epochs (default 6; 3 with --fast)")
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
    c.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it is an edge package or an empty folder (nothing else)",
    )
    c.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the trained model in OUT.work/ (kept anyway when a later step fails); "
        "--model OUT.work/trained.keras reuses it without training",
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print report.json instead of a table")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=_cmd_convert)

    r = sub.add_parser("report", help="print a package's conversion report")
    r.add_argument("package")
    r.add_argument("--json", action="store_true")
    r.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    r.set_defaults(func=_cmd_report)

    e = sub.add_parser(
        "eval",
        help="run a package over a test set under a policy",
        description="Streams the test split through the runtime one input at "
        "a time and reports accuracy, cost, latency and exits.",
    )
    e.add_argument("package")
    e.add_argument("--dataset", default="fashion-mnist")
    e.add_argument("--policy", default="bandit", help="full, threshold:T, bandit[:ALGO], oracle")
    e.add_argument("--backend", default="auto")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--limit", type=int, help="only the first N test images")
    e.add_argument("--lam", type=float, help="bandit: cost weight lambda")
    e.add_argument("--budget-ms", type=float, help="bandit: target mean latency")
    e.add_argument("--state", help="bandit state file (default: start fresh)")
    e.add_argument("--offload", metavar="URL", help="edgekit serve URL: split computing")
    e.add_argument("--offload-token", help="bearer token for --offload ($EDGEKIT_OFFLOAD_TOKEN)")
    e.add_argument("--record", help="save the per-exit recording (.npz) for `simulate`")
    e.add_argument("--plots", help="folder for accuracy_vs_cost.png and exit_histogram.png")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_eval)

    sm = sub.add_parser("simulate", help="replay policies over a recording from `eval`")
    sm.add_argument("recording")
    sm.add_argument(
        "--policy",
        action="append",
        default=None,
        help="repeatable; default: bandit:ucb, bandit:thompson, threshold:0.9",
    )
    sm.add_argument("--lam", type=float, default=0.15)
    sm.add_argument("--cost", choices=["latency", "macs"], default="latency")
    sm.add_argument("--repeat", type=int, default=1, help="replay the stream N times shuffled")
    sm.add_argument(
        "--skip", type=int, default=0, help="leave the first N inputs out of the summary"
    )
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--plots", help="folder for regret.png")
    sm.add_argument("--json", action="store_true")
    sm.set_defaults(func=_cmd_simulate)

    b = sub.add_parser(
        "bench",
        help="stage latencies, INT8 vs float, runtime overhead (here, or on devices)",
        description="Without TARGET: benchmark here. With TARGETs: push the package if "
        "needed and benchmark on each device (stage latencies, policies, memory, probe).",
    )
    b.add_argument("package")
    b.add_argument("targets", nargs="*", metavar="TARGET", help="user@host[:port] or ssh alias")
    b.add_argument("--dataset", default="fashion-mnist")
    b.add_argument("--backend", default="litert")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("-n", type=int, default=1000)
    b.add_argument("--json", action="store_true")
    from edgekit.devices.cli import ssh_arguments

    ssh_arguments(b)
    b.set_defaults(func=_cmd_bench)

    v = sub.add_parser("verify", help="check every file of a package against its sha256")
    v.add_argument("package")
    v.set_defaults(func=_cmd_verify)

    # Commands that live with their component register themselves (serve, device, push...).
    # Each module imports only argparse at the top; heavy imports stay in the handlers.
    for name in _PLUGINS:
        importlib.import_module(name).register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "policy", "") is None and args.command == "simulate":
        args.policy = ["bandit:ucb", "bandit:thompson", "threshold:0.9"]
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
