"""NVIDIA Jetson, FP16 flavour: ONNX stages computed in float16, with 8-bit stage I/O.

``convert --target jetson --jetson-precision fp16`` writes these instead of the INT8 Q/DQ
stages of :mod:`edgekit.converters._jetson`. The float model is converted with onnxruntime's
own ``onnxruntime.transformers.float16.convert_float_to_float16`` (``keep_io_types``: the
graph edges stay float32), then the edges get the same Cast/Sub/Mul (in) and
Mul/Round/Add/Clip/Cast (out) ops as the INT8 Jetson stages, in float32. The stage contract
is unchanged: a stage reads and writes int8 bytes on the TFLite parameters of the manifest,
so it chains with the stages of any other format and the runtime needs nothing new. On a
Jetson the runtime's TensorRT provider builds an FP16 engine (the file has no
DequantizeLinear, so ``trt_int8_enable`` is off and ``trt_fp16_enable`` on).

On an x86 CPU onnxruntime has no float16 kernel for most ops: it runs them in float32 on
the float16 weights (it inserts Casts), so an accuracy measured here covers the float16
rounding of the weights and of the tensors at the Casts, not float16 arithmetic.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, require
from edgekit._package import QuantParams

from . import _onnx as ox
from ._jetson import TRT_OPSET_RANGE, _tflite_bytes_at_the_edges

__all__ = ["PRECISIONS", "export_jetson_fp16_onnx", "fp16_problems"]

PRECISIONS = ("int8", "fp16")
# Largest mean |FP16 - float32| of a stage's int8 outputs on the calibration inputs, in
# quanta of the output grid: float16 rounding moves an 8-bit output by a quantum at times
# (a value near a rounding boundary), overflow or lost precision by many.
MAX_MEAN_QUANTA = 0.5
_F16_MAX = 65504.0
_CHECK_SAMPLES = 256  # calibration inputs the float16 checks run on
_CHECK_BYTES = 256 << 20  # float32 tensors fetched at once by the range check, about
_FLOAT, _INT8, _FLOAT16 = 1, 3, 10  # onnx.TensorProto data types
_EDGE = "_ek_"  # in the names of the int8 edge ops and their constants (see _jetson)
# Quantized ops have no place in an FP16 stage (their presence would also switch the
# runtime's TensorRT options to INT8).
_QUANT_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
)


def export_jetson_fp16_onnx(
    model: Any,
    path: Path,
    calib: np.ndarray | None = None,
    *,
    io_quant: Mapping[str, QuantParams],
    opset: int = 17,
) -> None:
    """Write an FP16 ONNX stage of ``model`` whose 8-bit I/O uses ``io_quant`` (TFLite's).

    ``io_quant`` maps ``"input"`` and the output names to their int8 parameters, as for
    :func:`edgekit.converters._jetson.export_jetson_onnx`. ``calib`` (representative stage
    inputs, float) needs no calibration here: when given, the FP16 stage runs on it next to
    the same graph in float32 and a ConversionError says so if float16 changes the int8
    outputs by more than :data:`MAX_MEAN_QUANTA` on average (values beyond float16's range,
    65504, become inf; tiny ones lose their digits).
    """
    if not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        raise ConversionError(
            f"opset {opset} is outside what TensorRT's ONNX parser reads here {TRT_OPSET_RANGE}",
            hint="use opset 17",
        )
    onnx = ox._onnx_module()
    float16 = require(
        "onnxruntime.transformers.float16", "convert", purpose="the Jetson FP16 export"
    )
    inp = ox._keras_input(model)
    wanted = ox._target_quant(io_quant, list(model.output_names), "int8")
    if calib is not None:
        calib = ox._check_calib(calib, tuple(inp.shape)[1:])
    proto = ox._float_model_proto(model, opset)
    reference = onnx.ModelProto()
    reference.CopyFrom(proto)
    try:
        half = float16.convert_float_to_float16(proto, keep_io_types=True)
    except Exception as exc:
        raise ConversionError(
            f"onnxruntime's float16 conversion failed on {getattr(model, 'name', '?')!r}: "
            f"{type(exc).__name__}: {exc}",
            hint="convert with --jetson-precision int8 (the default)",
        ) from exc
    _tflite_bytes_at_the_edges(half, wanted)
    _topological_order(half.graph)
    try:
        onnx.checker.check_model(half)
    except Exception as exc:
        raise ConversionError(
            f"the Jetson FP16 stage is not a valid ONNX model: {exc}",
            hint="this is a bug in edgekit's FP16 export; convert with --jetson-precision int8",
        ) from exc
    problems = fp16_problems(half)
    if problems:
        raise ConversionError(
            "the Jetson FP16 stage is not what TensorRT's FP16 path expects: "
            + "; ".join(problems[:5]),
            hint="convert with --jetson-precision int8 (the default)",
        )
    if calib is not None:
        _tflite_bytes_at_the_edges(reference, wanted)
        _compare_with_float32(half, reference, calib, wanted)
    with tempfile.TemporaryDirectory(prefix="edgekit-fp16-") as tmp:
        tmp_path = Path(tmp) / "stage.onnx"
        onnx.save(half, str(tmp_path))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_path), str(path))


def _compare_with_float32(
    half: Any, reference: Any, calib: np.ndarray, wanted: Mapping[str, QuantParams]
) -> None:
    """ConversionError if a float32 tensor of the stage leaves float16's range on ``calib``,
    or if the FP16 stage's int8 outputs stray from float32's.

    The range is read on the float32 graph because onnxruntime on a CPU computes most float16
    ops in float32 (an overflow TensorRT's FP16 engine would hit does not show in its
    outputs here)."""
    import onnxruntime as ort

    onnx = ox._onnx_module()
    q = wanted["input"]
    x = np.clip(np.round(calib[:_CHECK_SAMPLES] / q.scale) + q.zero_point, -128, 127)
    x = x.astype(np.int8)
    inp = half.graph.input[0].name
    names = [o.name for o in half.graph.output]
    typed = onnx.shape_inference.infer_shapes(reference)
    floats = [v.name for v in typed.graph.value_info if v.type.tensor_type.elem_type == _FLOAT]
    per_sample = sum(  # bytes of every float tensor for one input (batch dim left out)
        4 * int(np.prod([d.dim_value or 1 for d in v.type.tensor_type.shape.dim[1:]]))
        for v in typed.graph.value_info
        if v.type.tensor_type.elem_type == _FLOAT
    )
    step = int(max(1, min(32, _CHECK_BYTES // max(1, per_sample))))
    probe = onnx.ModelProto()
    probe.CopyFrom(reference)
    have = set(names)
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, _FLOAT, None) for n in floats if n not in have
    )
    every = [o.name for o in probe.graph.output]

    def run(proto: Any, fetch: list[str]) -> Iterator[list[np.ndarray]]:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        for i in range(0, len(x), step):  # chunks: every tensor of the stage is fetched
            yield [np.asarray(o) for o in sess.run(fetch, {inp: x[i : i + step]})]

    peak = dict.fromkeys(every, 0.0)
    for chunk in run(probe, every):
        for n, a in zip(every, chunk):
            if a.size and np.issubdtype(a.dtype, np.floating):
                peak[n] = max(peak[n], float(np.abs(a).max()))
    over = {n: v for n, v in peak.items() if not v <= _F16_MAX}  # inf and NaN too
    if over:
        name, value = max(over.items(), key=lambda kv: kv[1])
        raise ConversionError(
            f"{len(over)} tensors of the stage leave float16's range (65504) on the calibration "
            f"data, e.g. {name!r} reaches {value:.4g}",
            hint="TensorRT's FP16 engine would overflow there; convert with "
            "--jetson-precision int8 (the default)",
        )
    got = [np.concatenate(o) for o in zip(*run(half, names))]
    want = [np.concatenate(o) for o in zip(*run(reference, names))]
    for name, h, f in zip(names, got, want):
        diff = np.abs(h.astype(np.int32) - f.astype(np.int32))
        if float(diff.mean()) > MAX_MEAN_QUANTA:
            raise ConversionError(
                f"float16 changes the stage's {name!r} by {diff.mean():.2f} quanta on average "
                f"(largest {int(diff.max())}) against float32 on the calibration data",
                hint="the model has weights or values below float16's precision; convert "
                "with --jetson-precision int8 (the default)",
            )


def _topological_order(graph: Any) -> None:
    """Sort the nodes so each comes after the producers of its inputs (the float16
    converter appends its I/O Casts at the end; ONNX requires the order)."""
    have = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    todo = list(graph.node)
    done: list[Any] = []
    while todo:
        ready = [n for n in todo if all(i in have for i in n.input)]
        if not ready:
            missing = sorted({i for n in todo for i in n.input if i not in have})[:3]
            raise ConversionError(
                f"the FP16 graph has inputs no node produces: {missing}",
                hint="this is a bug in edgekit's FP16 export; convert with --jetson-precision int8",
            )
        ids = {id(n) for n in ready}
        todo = [n for n in todo if id(n) not in ids]
        for n in ready:
            done.append(n)
            have.update(n.output)
    del graph.node[:]
    graph.node.extend(done)


def fp16_problems(proto: Any) -> list[str]:
    """What keeps an ONNX model from being an FP16 Jetson stage ([] if nothing).

    Checked: the opset (TensorRT's parser); no quantized ops; int8 graph input and outputs;
    every float weight float16; every float tensor computed between the edges float16 (the
    int8 edge ops and onnxruntime's I/O Casts are the only float32 ones).
    """
    onnx = ox._onnx_module()
    graph = proto.graph
    problems: list[str] = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        problems.append(f"opset {opset} is outside {TRT_OPSET_RANGE}")
    for t in [*graph.input, *graph.output]:
        if t.type.tensor_type.elem_type != _INT8:
            problems.append(f"graph I/O {t.name!r} is not int8 (the stage contract)")
    quant = sorted({n.op_type for n in graph.node if n.op_type in _QUANT_OPS})
    quant += sorted({n.op_type for n in graph.node if n.op_type.startswith("QLinear")})
    if quant:
        problems.append(f"quantized ops {quant} in an FP16 stage")
    f32 = [i.name for i in graph.initializer if i.data_type == _FLOAT and _EDGE not in i.name]
    if f32:
        problems.append(f"{len(f32)} float32 weights (e.g. {f32[0]!r}), not float16")
    try:
        typed = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # the types cannot be read: say so, do not guess
        problems.append(f"tensor types could not be inferred ({type(exc).__name__})")
        return problems
    types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    for n in graph.node:
        if _EDGE in n.name or n.op_type == "Cast":
            continue
        if any(types.get(o) == _FLOAT for o in n.output):
            problems.append(f"{n.op_type} {n.name!r} computes in float32")
    return problems
