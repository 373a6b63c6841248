"""Where a package's INT8 stages spend their time: a per-op profile from timed sub-graphs.

    python -m benchmarks.runtime_profile --package build/fmnist.edgepkg [--threads 1]

LiteRT's Python interpreter has no op profiler, so each stage file is cut after every
operator (the flatbuffer keeps ops ``0..i`` and outputs op ``i``'s tensor) and every prefix
is timed with the real interpreter: the difference between consecutive prefixes is what op
``i`` adds, XNNPACK's partitioning included. ``--no-xnnpack`` times the builtin kernels.
Needs only numpy and ai_edge_litert (it runs on the remote host of
``benchmarks.runtime_remote`` too). Prints a table per file and the raw invoke time of each
stage, of the stage chain and of the unsplit model.

``--predict`` (needs edgekit) times ``policy=full``'s ``predict`` against the bench's raw
baseline and the bare invoke instead, step by step (``_overhead.window_profile``), uint8
and float images, beside the runtime of ``--before REV`` when given.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _interpreter(content: bytes, threads: int, xnnpack: bool) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(
        model_content=content, num_threads=threads, experimental_op_resolver_type=kind
    )
    interp.allocate_tensors()
    return interp


def invoke_us(content: bytes, *, threads: int = 1, xnnpack: bool = True, n: int = 300) -> float:
    """Median of 7 runs of ``n`` invokes, per invoke in microseconds (input: a fixed tensor)."""
    interp = _interpreter(content, threads, xnnpack)
    for d in interp.get_input_details():
        shape = [1 if s < 0 else int(s) for s in d["shape_signature"]] or list(d["shape"])
        dt = np.dtype(d["dtype"])
        if dt.kind in "iu":
            x = np.random.default_rng(0).integers(-20, 20, shape).astype(dt)
        else:
            x = np.random.default_rng(0).standard_normal(shape).astype(dt)
        interp.set_tensor(d["index"], x)
    invoke = interp.invoke
    for _ in range(max(20, n // 10)):
        invoke()
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            invoke()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return float(np.median(runs))


def _ops(model: Any) -> list[str]:
    from ai_edge_litert.tools import flatbuffer_utils as fu

    return [
        _op_name(fu, model.operatorCodes[op.opcodeIndex]) for op in model.subgraphs[0].operators
    ]


def _op_name(fu: Any, code: Any) -> str:
    builtin = fu.get_builtin_code_from_operator_code(code)
    for k, v in vars(fu.schema_fb.BuiltinOperator).items():
        if v == builtin and not k.startswith("_"):
            return str(k)
    return str(builtin)


def _tensor_desc(sg: Any, index: int) -> str:
    t = sg.tensors[index]
    from ai_edge_litert.tools import flatbuffer_utils as fu

    shape = "x".join(str(int(s)) for s in (t.shape if t.shape is not None else []))
    return f"{fu.type_to_name(t.type).lower()}[{shape}]"


def prefix_profile(
    content: bytes, *, threads: int = 1, xnnpack: bool = True, n: int = 300
) -> list[dict[str, Any]]:
    """One row per operator: its name, output, the prefix's time and what the op adds."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model_from_bytearray(bytearray(content))
    sg = model.subgraphs[0]
    names = _ops(model)
    rows: list[dict[str, Any]] = []
    prev = 0.0
    for i, op in enumerate(sg.operators):
        cut = copy.deepcopy(model)
        cut.signatureDefs = []
        csg = cut.subgraphs[0]
        csg.operators = csg.operators[: i + 1]
        csg.outputs = np.array([op.outputs[0]], dtype=np.int32)
        us = invoke_us(
            bytes(fu.convert_object_to_bytearray(cut)), threads=threads, xnnpack=xnnpack, n=n
        )
        rows.append(
            {
                "op": i,
                "name": names[i],
                "output": _tensor_desc(sg, int(op.outputs[0])),
                "prefix_us": round(us, 2),
                "adds_us": round(us - prev, 2),
            }
        )
        prev = us
    return rows


def print_profile(title: str, rows: Sequence[dict[str, Any]], whole_us: float) -> None:
    print(f"\n{title}: {whole_us:.1f} us per invoke")
    print(f"  {'#':>3} {'op':<22} {'output':<22} {'prefix us':>10} {'adds us':>9}")
    for r in rows:
        print(
            f"  {r['op']:>3} {r['name']:<22} {r['output']:<22} {r['prefix_us']:>10.1f} "
            f"{r['adds_us']:>9.1f}"
        )


def profile_package(
    package: Path, *, threads: int = 1, xnnpack: bool = True, n: int = 300, ops: bool = True
) -> dict[str, Any]:
    """Raw invoke time of every stage, their sum and the unsplit model, plus op profiles."""
    manifest = json.loads((package / "manifest.json").read_text())
    files = [package / s["files"]["tflite"] for s in manifest["stages"]]
    res: dict[str, Any] = {"threads": threads, "xnnpack": xnnpack, "stages": []}
    for f in files:
        content = f.read_bytes()
        whole = invoke_us(content, threads=threads, xnnpack=xnnpack, n=n)
        rows = prefix_profile(content, threads=threads, xnnpack=xnnpack, n=n) if ops else []
        res["stages"].append({"file": f.name, "us": round(whole, 2), "ops": rows})
        if ops:
            print_profile(f.name, rows, whole)
    full = package / manifest["full"]["tflite"]
    res["full_us"] = round(invoke_us(full.read_bytes(), threads=threads, xnnpack=xnnpack, n=n), 2)
    res["stages_sum_us"] = round(sum(s["us"] for s in res["stages"]), 2)
    shares = [s["us"] / res["stages_sum_us"] for s in res["stages"]]
    print(
        f"\nraw invoke us (threads {threads}, {'XNNPACK' if xnnpack else 'builtin kernels'}): "
        + ", ".join(f"{s['file']} {s['us']:.1f}" for s in res["stages"])
        + f"; sum {res['stages_sum_us']:.1f}; unsplit {res['full_us']:.1f}; stage shares "
        + " ".join(f"{x:.2f}" for x in shares)
    )
    return res


def _predict_profile(
    package: Path, dataset: str, before: str | None, rounds: int, cpu: bool
) -> int:
    from edgekit.data import load_dataset

    from ._overhead import window_profile

    xf = np.asarray(load_dataset(dataset).x_test[:3000], np.float32)
    x8 = np.round(xf * 255).astype(np.uint8)
    us = window_profile(package, x8, xf, before=before, rounds=rounds, cpu=cpu)
    raw, bare = us["raw"], us["invoke"]
    what = "thread CPU time" if cpu else "wall clock"
    print(f"policy=full per call, us ({what}, median of {rounds} interleaved rounds), {package}")
    for name, v in us.items():
        print(f"  {name:<24} {v:8.2f}   {v / raw:6.3f} of raw   {v - bare:+7.2f} over invoke")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="build/fmnist.edgepkg")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-xnnpack", action="store_true")
    ap.add_argument("--no-ops", action="store_true", help="stage totals only")
    ap.add_argument("-n", type=int, default=300, help="invokes per timing run")
    ap.add_argument("--json", help="write the profile here (default: $OUT/profile.json)")
    ap.add_argument("files", nargs="*", help=".tflite files to profile instead of a package")
    ap.add_argument("--predict", action="store_true", help="time predict(full) step by step")
    ap.add_argument("--before", help="with --predict: also the runtime at this git revision")
    ap.add_argument("--rounds", type=int, default=40, help="with --predict: interleaved rounds")
    ap.add_argument("--dataset", default="fashion-mnist", help="with --predict: test images")
    ap.add_argument("--cpu", action="store_true", help="with --predict: thread CPU time")
    args = ap.parse_args(argv)
    if args.predict:
        return _predict_profile(
            Path(args.package), args.dataset, args.before, args.rounds, args.cpu
        )
    if args.files:
        for f in args.files:
            content = Path(f).read_bytes()
            kw = {"threads": args.threads, "xnnpack": not args.no_xnnpack, "n": args.n}
            print_profile(f, prefix_profile(content, **kw), invoke_us(content, **kw))
        return 0
    res = profile_package(
        Path(args.package),
        threads=args.threads,
        xnnpack=not args.no_xnnpack,
        n=args.n,
        ops=not args.no_ops,
    )
    dest = args.json or (
        os.path.join(os.environ["OUT"], "profile.json") if "OUT" in os.environ else None
    )
    if dest:
        Path(dest).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
