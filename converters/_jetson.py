"""NVIDIA Jetson: ONNX stages in TensorRT's explicit-quantization form.

TensorRT builds INT8 engines from QDQ ONNX only when every QuantizeLinear/DequantizeLinear
is symmetric int8 (zero point 0; per-channel along the output channels for weights) and
sits where its fusion passes expect it (Q->DQ pairs in front of convolutions, matrix
products, element-wise adds, pooling and data-movement ops). The default ONNX stages are
asymmetric (zero points pinned to the TFLite boundary parameters, e.g. -128), so TensorRT
rejects them. NVIDIA's Model Optimizer (``nvidia-modelopt``) makes such files but does not
install next to this stack: 0.47.0 requires ``torch>=2.8``, and its ``onnx`` extra
``onnx~=1.21.0`` (the lock has 1.23.2) and, on Linux x86-64 with Python 3.11,
``onnxruntime-gpu~=1.24.2`` (``~=1.22.0`` on Python 3.10), a second distribution of the
``onnxruntime`` module that would overwrite the lock's onnxruntime 1.31.1 (pip does not flag
it); ONNX Runtime's own static quantizer makes them too, with ``ActivationSymmetric`` and
``WeightSymmetric``, which is what is used here. The FP16 flavour is in :mod:`._fp16`.

Stage contract: the bytes between stages stay those of TFLite (the manifest's parameters).
A Jetson stage reads them with Cast/Sub/Mul in front of its first Q->DQ pair and writes its
outputs with Mul/Round/Add/Clip/Cast after its last DQ: plain element-wise ops that
TensorRT (or the CUDA provider) runs at the graph's edges, so the engine in between is
purely symmetric and the runtime, the server and the other formats need no second set of
parameters. Inside, the boundary tensors use the symmetric range that covers the TFLite
range exactly, so clipping matches.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError
from edgekit._package import QuantParams

from . import _onnx as ox

__all__ = ["TRT_OPSET_RANGE", "export_jetson_onnx", "symmetric", "tensorrt_problems"]

# TensorRT's ONNX parser reads per-channel Q/DQ from opset 13; 8.5 (JetPack 5) parses up to 17.
TRT_OPSET_RANGE = (13, 17)
# Ops a DequantizeLinear may feed for TensorRT to fuse or propagate the quantization
# (TensorRT developer guide, "Explicit quantization": Q/DQ fusion into convolution, matrix
# multiply and element-wise add; propagation through pooling and data-movement ops).
_TRT_QDQ_CONSUMERS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "Relu",
        "Clip",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Resize",
        "Pad",
        "Slice",
    }
)
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_EDGE_OUT = "_ek_out_mul"  # name suffix of the first node after an output's last DQ
_INT8 = 3  # onnx.TensorProto.INT8
_FLOAT = 1


def symmetric(q: QuantParams) -> QuantParams:
    """The zero-point-0 int8 grid that covers the real range of ``q`` (int8 or uint8)."""
    lo, hi = (-128, 127) if q.dtype == "int8" else (0, 255)
    bound = max(abs(q.scale * (lo - q.zero_point)), abs(q.scale * (hi - q.zero_point)))
    return QuantParams(float(np.float32(bound / 127.0)), 0, "int8")


def export_jetson_onnx(
    model: Any,
    path: Path,
    calib: np.ndarray,
    *,
    io_quant: Mapping[str, QuantParams],
    opset: int = 17,
) -> dict[str, QuantParams]:
    """Write a TensorRT-ready INT8 ONNX stage whose 8-bit I/O uses ``io_quant`` (TFLite's).

    ``io_quant`` maps ``"input"`` and output names to their int8 parameters, as for
    :func:`edgekit.converters._onnx.export_int8_onnx`. Returns the symmetric parameters
    used inside for those tensors.
    """
    if not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        raise ConversionError(
            f"opset {opset} is outside what TensorRT's ONNX parser reads here {TRT_OPSET_RANGE}",
            hint="use opset 17",
        )
    onnx = ox._onnx_module()
    inp = ox._keras_input(model)
    wanted = ox._target_quant(io_quant, list(model.output_names), "int8")
    sym = {name: symmetric(q) for name, q in wanted.items()}
    calib = ox._check_calib(calib, tuple(inp.shape)[1:])
    proto = ox._float_model_proto(model, opset)
    with tempfile.TemporaryDirectory(prefix="edgekit-jetson-") as tmp:
        q_path = Path(tmp) / "q.onnx"
        qmodel = ox.quantize_qdq(
            proto,
            calib,
            pinned=sym,
            activation_type="int8",
            symmetric=True,  # TensorRT quantizes float biases itself
            purpose="Jetson ONNX export",
            hint="check that calib holds representative, finite samples",
        )
        _tflite_bytes_at_the_edges(qmodel, wanted)
        ox.check_int8(qmodel, "the Jetson ONNX stage", "this is a bug in edgekit's Jetson export")
        problems = tensorrt_problems(qmodel)
        if problems:
            raise ConversionError(
                "the Jetson ONNX stage breaks TensorRT's explicit-quantization rules: "
                + "; ".join(problems[:5]),
                hint="a layer may quantize in a way TensorRT does not fuse; report it with "
                "the model, or convert with the default --target",
            )
        onnx.save(qmodel, str(q_path))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(q_path), str(path))
    return sym


def _tflite_bytes_at_the_edges(proto: Any, wanted: Mapping[str, QuantParams]) -> None:
    """Make the float graph input/outputs 8-bit tensors on TFLite's grid, with plain ops."""
    onnx = ox._onnx_module()
    helper, nh = onnx.helper, onnx.numpy_helper
    graph = proto.graph

    def const(name: str, value: float) -> str:
        graph.initializer.append(nh.from_array(np.array(value, np.float32), name))
        return name

    def rename_uses(old: str, new: str) -> None:
        for n in graph.node:
            n.input[:] = [new if i == old else i for i in n.input]

    (inp,) = graph.input
    q = wanted[inp.name]
    real = f"{inp.name}_ek_real"
    rename_uses(inp.name, real)
    pre = [
        helper.make_node("Cast", [inp.name], [f"{real}_cast"], to=_FLOAT, name=f"{real}_cast"),
        helper.make_node(
            "Sub",
            [f"{real}_cast", const(f"{real}_zp", q.zero_point)],
            [f"{real}_c"],
            name=f"{real}_sub",
        ),
        helper.make_node(
            "Mul", [f"{real}_c", const(f"{real}_scale", q.scale)], [real], name=f"{real}_mul"
        ),
    ]
    for i, node in enumerate(pre):
        graph.node.insert(i, node)
    inp.type.tensor_type.elem_type = _INT8

    for out in graph.output:
        q = wanted[out.name]
        real = f"{out.name}_ek_real"
        for n in graph.node:
            n.output[:] = [real if o == out.name else o for o in n.output]
        rename_uses(out.name, real)
        b = f"{out.name}_ek"
        graph.node.extend(
            [
                helper.make_node(
                    "Mul",
                    [real, const(f"{b}_inv_scale", 1.0 / q.scale)],
                    [f"{b}_s"],
                    name=f"{b}{_EDGE_OUT}",
                ),
                helper.make_node("Round", [f"{b}_s"], [f"{b}_r"], name=f"{b}_round"),
                helper.make_node(
                    "Add", [f"{b}_r", const(f"{b}_zp", q.zero_point)], [f"{b}_z"], name=f"{b}_add"
                ),
                helper.make_node(
                    "Clip",
                    [f"{b}_z", const(f"{b}_lo", -128.0), const(f"{b}_hi", 127.0)],
                    [f"{b}_c"],
                    name=f"{b}_clip",
                ),
                helper.make_node("Cast", [f"{b}_c"], [out.name], to=_INT8, name=f"{b}_cast"),
            ]
        )
        out.type.tensor_type.elem_type = _INT8
    del graph.value_info[:]


def tensorrt_problems(proto: Any) -> list[str]:
    """What in an ONNX model breaks TensorRT's explicit-quantization rules ([] if nothing).

    Checked: the opset; every Q/DQ int8 with zero point 0 and a float32 positive scale;
    per-tensor activations and per-output-channel weights; every activation Q followed by
    a DQ; every DQ feeding an op TensorRT fuses or propagates Q/DQ through; no QOperator
    (QLinearConv, ...) nodes.
    """
    onnx = ox._onnx_module()
    nh = onnx.numpy_helper
    graph = proto.graph
    problems: list[str] = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        problems.append(f"opset {opset} is outside {TRT_OPSET_RANGE}")
    inits = {i.name: i for i in graph.initializer}
    users = ox._consumers(graph)
    outputs = {o.name for o in graph.output}
    for n in graph.node:
        where = f"{n.op_type} {n.name or n.output[0]!r}"
        if n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger"):
            problems.append(f"{where}: QOperator nodes are not TensorRT's format (use Q/DQ)")
            continue
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) < 3 or n.input[2] not in inits:
            problems.append(f"{where}: no constant zero point (TensorRT needs an explicit 0)")
        else:
            zp = inits[n.input[2]]
            if zp.data_type != _INT8:
                problems.append(f"{where}: zero point type {zp.data_type} is not int8")
            elif np.any(nh.to_array(zp) != 0):
                problems.append(f"{where}: zero point {nh.to_array(zp).ravel()[:4]} is not 0")
        scale = inits.get(n.input[1])
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
            continue
        s = nh.to_array(scale)
        if scale.data_type != _FLOAT or not np.all(s > 0) or not np.all(np.isfinite(s)):
            problems.append(f"{where}: scale must be positive finite float32")
        is_weight = n.op_type == "DequantizeLinear" and n.input[0] in inits
        if is_weight:
            readers = users.get(n.output[0], [])
            if not readers or any(r.op_type not in _WEIGHTED for r in readers):
                problems.append(f"{where}: int8 weights feed {[r.op_type for r in readers]}")
            if s.size > 1:
                w = nh.to_array(inits[n.input[0]])
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                if s.ndim != 1 or w.shape[axis] != s.size:
                    problems.append(f"{where}: per-channel scale does not follow axis {axis}")
            continue
        if s.size != 1:
            problems.append(f"{where}: activations must be quantized per tensor")
        if n.op_type == "QuantizeLinear":
            nxt = users.get(n.output[0], [])
            if n.output[0] in outputs or any(r.op_type != "DequantizeLinear" for r in nxt):
                problems.append(f"{where}: a QuantizeLinear must feed DequantizeLinear only")
        else:
            for r in users.get(n.output[0], []):
                # the last DQ before a graph output feeds the edge's requantization
                edge = r.op_type == "Mul" and r.name.endswith(_EDGE_OUT)
                if r.op_type not in _TRT_QDQ_CONSUMERS and not edge:
                    problems.append(f"{where}: feeds {r.op_type}, which TensorRT does not fuse")
    return problems


def compare_with_default(
    stages_float: list[Any],
    calib: np.ndarray,
    stage_quant: list[Mapping[str, QuantParams]],
    jetson_stages: list[Path],
    x_q: np.ndarray,
    y: np.ndarray,
    work: Path,
    *,
    precision: str = "int8",
    float_onnx: Path | None = None,
    input_quant: QuantParams | None = None,
) -> dict[str, Any]:
    """Accuracy of the Jetson stages next to the default (asymmetric int8) ONNX stages.

    Both chains run in onnxruntime on this machine (CPU) on the same int8 test inputs; the
    default stages are written to ``work`` and not kept. ``precision`` says what the Jetson
    stages are (``int8``: symmetric Q/DQ; ``fp16``: :mod:`._fp16`). For ``fp16``, the drop
    from ``float_onnx`` (the unsplit float32 ONNX model of the same weights, outputs
    ``exit_K``) is reported too, on the same 8-bit inputs (``x_q`` read with
    ``input_quant``), so only the float16 rounding counts.
    """
    from edgekit.runtime.backends import onnxruntime as ort_backend

    from ._onnx import export_int8_onnx
    from ._validate import run_chain

    work.mkdir(parents=True, exist_ok=True)
    default, feats = [], calib
    for k, sf in enumerate(stages_float):
        p = work / f"default_stage_{k}.onnx"
        export_int8_onnx(sf, p, feats, io_quant=stage_quant[k], activation_type="int8")
        default.append(p)
        if k < len(stages_float) - 1:
            feats = np.asarray(sf.predict(feats, verbose=0, batch_size=256)[0])
    a = run_chain(ort_backend, default, x_q)
    b = run_chain(ort_backend, jetson_stages, x_q)
    acc_d = [float((o.argmax(1) == y).mean()) for o in a]
    acc_j = [float((o.argmax(1) == y).mean()) for o in b]
    worst = max(d - j for d, j in zip(acc_d, acc_j))
    pairs = ", ".join(f"{100 * d:.2f}% -> {100 * j:.2f}%" for d, j in zip(acc_d, acc_j))
    if precision == "fp16":
        out: dict[str, Any] = {
            "precision": "fp16",
            "accuracy_default_onnx_int8": acc_d,
            "accuracy_jetson_onnx_fp16": acc_j,
            "max_drop_points": round(100 * worst, 2),
            "lines": [
                "ONNX stages: float16 weights and tensors (onnxruntime's "
                "convert_float_to_float16, keep_io_types), opset 17, no Q/DQ; 8-bit stage I/O "
                "on the TFLite parameters (Cast/Sub/Mul in, Mul/Round/Add/Clip/Cast out, "
                "float32)",
                "accuracy per exit on onnxruntime CPU, default int8 -> Jetson FP16 stages: "
                + pairs,
            ],
        }
        if float_onnx is not None and input_quant is not None:
            acc_f = _float_accuracy(float_onnx, x_q, input_quant, y, len(acc_j))
            drop = max(f - j for f, j in zip(acc_f, acc_j))
            out["accuracy_float_onnx"] = acc_f
            out["max_drop_vs_float_points"] = round(100 * drop, 2)
            out["lines"].append(
                "float32 ONNX of the same weights -> Jetson FP16 per exit, same 8-bit inputs: "
                + ", ".join(f"{100 * f:.2f}% -> {100 * j:.2f}%" for f, j in zip(acc_f, acc_j))
                + f"; largest drop {100 * drop:.2f} points"
            )
        out["lines"].append(
            "onnxruntime on this CPU runs most float16 ops in float32 on the float16 weights "
            "(inserted Casts): float16 arithmetic and TensorRT's FP16 engine are not run here "
            "(no Jetson)"
        )
        return out
    return {
        "precision": "int8",
        "accuracy_default_onnx_int8": acc_d,
        "accuracy_jetson_onnx_int8": acc_j,
        "max_drop_points": round(100 * worst, 2),
        "lines": [
            "ONNX stages: symmetric int8 Q/DQ (zero point 0, per-channel weights), opset "
            "17; 8-bit stage I/O on the TFLite parameters (Cast/Sub/Mul in, "
            "Mul/Round/Add/Clip/Cast out)",
            "accuracy per exit on onnxruntime CPU, default -> Jetson stages: " + pairs,
            f"largest drop: {100 * worst:.2f} points (not measured on a Jetson: no hardware)",
        ],
    }


def _float_accuracy(
    path: Path, x_q: np.ndarray, q: QuantParams, y: np.ndarray, n_exits: int
) -> list[float]:
    """Accuracy per exit of the unsplit float32 ONNX model on the real values of ``x_q``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [f"exit_{k}" for k in range(n_exits)]
    x = (q.scale * (x_q.astype(np.float32) - q.zero_point)).astype(np.float32)
    hits = np.zeros(n_exits)
    for i in range(0, len(x), 500):
        outs = sess.run(names, {sess.get_inputs()[0].name: x[i : i + 500]})
        hits += [(o.argmax(1) == y[i : i + 500]).sum() for o in outs]
    return [float(h / len(x)) for h in hits]
