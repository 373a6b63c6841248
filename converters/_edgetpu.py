"""Coral Edge TPU: check INT8 TFLite stages against the Edge TPU's published constraints.

Nothing installable checks a model for the Edge TPU: the only checker is ``edgetpu_compiler``
itself, an x86-64 Debian package from Coral's apt repository (not on PyPI). So the rules of
https://coral.ai/docs/edgetpu/models-intro/ ("Model requirements" and "Supported
operations") are written here, applied to the ``.tflite`` flatbuffer read with LiteRT's own
schema:

- one subgraph; every tensor size fixed at compile time (no dynamic dimension, batch 1);
- 8-bit (int8/uint8) graph inputs, outputs and activations; constant parameters;
- tensors of at most 3 dimensions, or only the 3 innermost larger than 1;
- only the operations of the published table, at op versions without features the Edge TPU
  lacks (int16 activations, hybrid or 4-bit weights, grouped convolution, half-pixel resize).

The compiler maps one segment of the graph, from the input up to the first operation it
cannot run; that operation and every one after it run on the CPU. The check reports the same
split. It is a pre-flight, not a replacement: the package still needs ``edgetpu_compiler``
(see :func:`compile_hint`), which alone knows its final mapping.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit._errors import ConversionError

__all__ = [
    "COMPILER",
    "EdgeTPUCheck",
    "OpCheck",
    "check_edgetpu",
    "compile_hint",
    "compile_stages",
    "static_batch1",
]

COMPILER = "edgetpu_compiler"

# The published op table (coral.ai, "Supported operations"), as TFLite builtin names.
_SUPPORTED = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
# Highest op version without a feature the Edge TPU lacks, from TFLite's op-version history:
# the next version adds int16 activations (most ops), grouped convolution (CONV_2D v5),
# half-pixel centres (RESIZE_NEAREST_NEIGHBOR v3) or hybrid/4-bit weights. Ops not listed
# are not capped here (the compiler may still refuse a version).
_MAX_VERSION = {
    "ADD": 2,
    "AVERAGE_POOL_2D": 2,
    "CONCATENATION": 2,
    "CONV_2D": 3,
    "FULLY_CONNECTED": 5,
    "MAX_POOL_2D": 2,
    "MEAN": 2,
    "QUANTIZE": 2,
    "RESIZE_NEAREST_NEIGHBOR": 2,
    "SOFTMAX": 2,
}
_EIGHT_BIT = frozenset({"INT8", "UINT8"})
# Constant (parameter) tensors may also be int32 (biases, shapes, paddings, axes).
_PARAM_TYPES = _EIGHT_BIT | {"INT32"}


@dataclass(frozen=True)
class OpCheck:
    """One operation, where the Edge TPU compiler would put it, and why."""

    index: int
    op: str
    version: int
    on_edgetpu: bool
    reason: str  # "" when mapped


@dataclass(frozen=True)
class EdgeTPUCheck:
    """The result of :func:`check_edgetpu` for one ``.tflite`` file."""

    name: str
    ops: tuple[OpCheck, ...]
    problems: tuple[str, ...]  # model-level: nothing maps until these are fixed

    @property
    def mapped(self) -> int:
        """How many operations would run on the Edge TPU."""
        return sum(o.on_edgetpu for o in self.ops)

    @property
    def cpu_ops(self) -> tuple[OpCheck, ...]:
        """The operations that would stay on the CPU."""
        return tuple(o for o in self.ops if not o.on_edgetpu)

    @property
    def ok(self) -> bool:
        """Whether every operation would run on the Edge TPU."""
        return not self.problems and not self.cpu_ops

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "ops": len(self.ops),
            "on_edgetpu": self.mapped,
            "problems": list(self.problems),
            "cpu_ops": [
                {"index": o.index, "op": o.op, "version": o.version, "reason": o.reason}
                for o in self.cpu_ops
            ],
        }

    def summary(self) -> str:
        """One line: how much maps, and the first reason something does not."""
        head = f"{self.name}: {self.mapped}/{len(self.ops)} ops on the Edge TPU"
        if self.problems:
            return f"{head}; {self.problems[0]}"
        first = next(iter(self.cpu_ops), None)
        if first is None:
            return head
        where = f"from op {first.index} ({first.op} v{first.version}) on the CPU"
        return f"{head}; {where}: {first.reason}"


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # pragma: no cover - ai-edge-litert is part of [convert]
        raise ConversionError(
            "reading a TFLite flatbuffer needs ai-edge-litert",
            hint="pip install 'edgekit[convert]'",
        ) from exc
    return schema


def _names(enum: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def _read(flatbuffer: bytes, name: str) -> Any:
    schema = _schema()
    if len(flatbuffer) < 8 or flatbuffer[4:8] != b"TFL3":
        raise ConversionError(
            f"{name} is not a TFLite flatbuffer (no TFL3 identifier)",
            hint="pass a .tflite file written by edgekit convert or the TFLite converter",
        )
    try:
        return schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    except Exception as exc:
        raise ConversionError(
            f"{name} is not a TFLite flatbuffer ({exc})",
            hint="pass a .tflite file written by edgekit convert or the TFLite converter",
        ) from exc


def _seq(x: Any) -> list[int]:
    """A flatbuffer vector (None, list or numpy array) as a list of ints."""
    return [] if x is None else [int(v) for v in x]


def _decode(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def check_edgetpu(flatbuffer: bytes, name: str = "model.tflite") -> EdgeTPUCheck:
    """Check one INT8 TFLite model against the Edge TPU's published constraints."""
    schema = _schema()
    model = _read(flatbuffer, name)
    ops_by_code, types = _names(schema.BuiltinOperator), _names(schema.TensorType)
    problems: list[str] = []
    subgraphs = model.subgraphs or []
    if len(subgraphs) != 1:
        problems.append(f"{len(subgraphs)} subgraphs: the Edge TPU compiles exactly one")
    if not subgraphs:
        return EdgeTPUCheck(name, (), tuple(problems))
    sg = subgraphs[0]
    tensors = sg.tensors or []
    buffers = model.buffers or []

    def is_const(t: Any) -> bool:
        b = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
        return b is not None and b.data is not None and len(b.data) > 0

    def tensor_problem(i: int) -> str:
        t = tensors[i]
        tname, ttype = _decode(t.name), types.get(t.type, str(t.type))
        shape = _seq(t.shape)
        sig = _seq(t.shapeSignature) if t.shapeSignature is not None else shape
        if any(d < 0 for d in sig):
            return f"tensor {tname!r} has a dynamic shape {sig} (the Edge TPU needs static sizes)"
        if is_const(t):
            return "" if ttype in _PARAM_TYPES or ttype == "INT16" else f"{tname!r} is {ttype}"
        if ttype not in _EIGHT_BIT:
            return f"tensor {tname!r} is {ttype}, not 8-bit (the model must be fully quantized)"
        if len(shape) > 3 and any(d > 1 for d in shape[:-3]):
            return f"tensor {tname!r} has shape {shape}: only the 3 innermost dims may exceed 1"
        return ""

    for label, idx in (("input", sg.inputs), ("output", sg.outputs)):
        for i in _seq(idx):
            t = tensors[i]
            ttype = types.get(t.type, str(t.type))
            if ttype not in _EIGHT_BIT:
                problems.append(
                    f"graph {label} {_decode(t.name)!r} is {ttype}: "
                    "the Edge TPU needs int8/uint8 I/O"
                )

    checks: list[OpCheck] = []
    cut = ""  # set at the first operation the compiler would not map
    for k, op in enumerate(sg.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        opname = ops_by_code.get(builtin, str(builtin))
        if opname == "CUSTOM":
            opname = f"CUSTOM({_decode(code.customCode)})"
        version = int(code.version)
        reason = ""
        if cut:
            reason = f"after op {cut}, which the Edge TPU cannot run (one segment from the input)"
        elif problems:
            reason = "the model-level problems above"
        elif opname not in _SUPPORTED:
            reason = f"{opname} is not in the Edge TPU's supported operations"
        elif version > _MAX_VERSION.get(opname, version):
            reason = (
                f"{opname} version {version} is newer than the Edge TPU supports "
                f"(<= {_MAX_VERSION[opname]}; later versions add int16/hybrid/grouped features)"
            )
        else:
            used = [i for i in [*_seq(op.inputs), *_seq(op.outputs)] if i >= 0]
            reason = next((p for i in used if (p := tensor_problem(i))), "")
        if reason and not cut and not problems:
            cut = f"{k} ({opname})"
        checks.append(OpCheck(k, opname, version, not reason, reason))
    return EdgeTPUCheck(name, tuple(checks), tuple(problems))


def static_batch1(flatbuffer: bytes, name: str = "model.tflite") -> bytes:
    """The same model with every dynamic batch dimension fixed to 1 (what the compiler needs).

    TFLite files converted from Keras carry ``shape_signature [-1, ...]``; their ``shape`` is
    already batch 1. Only the leading dimension is fixed; any other dynamic dimension is
    left for :func:`check_edgetpu` to report.
    """
    import flatbuffers

    model = _read(flatbuffer, name)
    for sg in model.subgraphs or []:
        for t in sg.tensors or []:
            sig = _seq(t.shapeSignature)
            if sig and sig[0] == -1:
                t.shapeSignature = [1, *sig[1:]]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def compile_hint(stage_files: Sequence[str]) -> str:
    """The commands that compile a package's Edge TPU stages on an x86-64 Debian host."""
    files = " ".join(stage_files)
    return (
        "compile the Edge TPU stages on an x86-64 Debian/Ubuntu host with Coral's compiler "
        "(apt repository https://packages.cloud.google.com/apt coral-edgetpu-stable, package "
        f"edgetpu-compiler): cd PKG && {COMPILER} -s -o tflite {files}; or put "
        f"{COMPILER} on PATH and push again (edgekit push compiles then)"
    )


def compile_stages(
    root: Path, stage_files: Sequence[str], compiler: str | None = None, timeout: float = 600
) -> list[Path]:
    """Run ``edgetpu_compiler`` on the package's static stage copies; returns what it wrote.

    Each ``edgetpu/stage_K.tflite`` becomes ``tflite/stage_K_edgetpu.tflite``, where the
    runtime's ``edgetpu`` backend looks for it. Raises :class:`ConversionError` when the
    compiler is missing or fails (its own output is in the message).
    """
    exe = compiler or shutil.which(COMPILER)
    if exe is None:
        raise ConversionError(f"{COMPILER} is not on PATH", hint=compile_hint(stage_files))
    out = root / "tflite"
    written = []
    for rel in stage_files:
        src = root / rel
        try:
            res = subprocess.run(
                [exe, "-s", "-o", str(out), str(src)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConversionError(f"{COMPILER} could not run on {rel}: {exc}") from exc
        target = out / f"{src.stem}_edgetpu.tflite"
        if res.returncode != 0 or not target.is_file():
            tail = (res.stdout + res.stderr).strip()[-2000:]
            raise ConversionError(
                f"{COMPILER} failed on {rel} (exit {res.returncode}): {tail}",
                hint="see the compiler's operation table above; ops it cannot map run on the CPU",
            )
        written.append(target)
    return written


def prepare_coral(root: Path, n_stages: int) -> tuple[dict[str, Any], str]:
    """Write ``edgetpu/stage_K.tflite`` (static batch 1) and check each one.

    Returns the report section and the manifest's ``targets["coral"]`` line (what the
    package still needs). The stages in ``tflite/`` are left as they are.
    """
    d = root / "edgetpu"
    d.mkdir(exist_ok=True)
    files, checks = [], []
    for k in range(n_stages):
        rel = f"edgetpu/stage_{k}.tflite"
        fb = static_batch1((root / "tflite" / f"stage_{k}.tflite").read_bytes(), f"stage_{k}")
        (root / rel).write_bytes(fb)
        files.append(rel)
        checks.append(check_edgetpu(fb, rel))
    report = {
        "ok": all(c.ok for c in checks),
        "stages": [c.to_dict() for c in checks],
        "summary": "; ".join(c.summary() for c in checks),
        "compiled": False,
        "needs": compile_hint(files),
        "rules": "coral.ai/docs/edgetpu/models-intro (checked here; not compiled)",
    }
    note = f"needs {COMPILER}: {' '.join(files)} -> tflite/stage_K_edgetpu.tflite"
    return report, note


def ensure_compiled(root: Path, compiler: str | None = None) -> list[Path]:
    """Make a ``--target coral`` package ready for the Edge TPU before it is pushed.

    Returns the compiled stages written now ([] when every ``tflite/stage_K_edgetpu.tflite``
    is already there). With ``edgetpu_compiler`` on PATH (or ``compiler`` given) it compiles
    ``edgetpu/stage_K.tflite`` and re-lists the package's files in its manifest; without it,
    raises :class:`ConversionError` saying how to compile.
    """
    from edgekit._package import read_manifest, write_manifest

    manifest = read_manifest(root)
    missing = [
        s.index
        for s in manifest.stages
        if not (root / "tflite" / f"stage_{s.index}_edgetpu.tflite").is_file()
    ]
    if not missing:
        return []
    sources = [f"edgetpu/stage_{k}.tflite" for k in missing]
    if "coral" not in manifest.targets or not all((root / s).is_file() for s in sources):
        raise ConversionError(
            f"{root.name} has no Edge TPU stages (stage_K_edgetpu.tflite) and was not "
            "converted for the Coral",
            hint="convert again with --target coral, then compile (README 'Coral')",
        )
    if compiler is None and shutil.which(COMPILER) is None:
        raise ConversionError(
            f"{root.name} is not compiled for the Edge TPU yet", hint=compile_hint(sources)
        )
    written = compile_stages(root, sources, compiler)
    write_manifest(root, manifest)
    return written
