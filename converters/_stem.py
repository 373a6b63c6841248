"""A float first convolution where INT8 is slower: the "float stem" of stage 0.

A model's first convolution reads the image, with 1 or 3 channels. INT8 kernels are built
for wide inputs: with so few input channels XNNPACK and onnxruntime spend most of their
time outside the multiply-adds (measured on an x86 host: a 3x3 conv from 1 to 32 channels
on 28x28 takes 27 us in INT8 and 5 us in float in LiteRT, 28 us and about 12 us in ORT),
so a layer with 1% of the MACs takes a third of the whole model's time and most of
stage 0's, where the early exit should save the most. Here that one convolution is
rewritten to run in float on the dequantized input, with the INT8 model's own weights
(dequantized: the same numbers) and its output quantized to the same grid, so every tensor
after it, the stage's I/O and the stage contract are unchanged.

The choice is a rule, so that converting twice gives the same package: ``auto`` (the
default) uses the float stem for every first conv that reads at most :data:`MAX_CHANNELS`
channels and gives the same outputs. :func:`choose` also times both forms of stage 0 in the
package's interpreter on this host, interleaved, for the report; ``measured`` keeps the
float stem only where that timing says it is clearly faster (for a conversion run on the
device itself), ``off`` in the convert options keeps everything INT8.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._onnx import _INPUT_QUANT_KEY as INPUT_QUANT_KEY
from ._onnx import _prune_unused

__all__ = [
    "MAX_CHANNELS",
    "StemChoice",
    "apply_float_stem",
    "choose",
    "float_stem_onnx",
    "float_stem_tflite",
]

MAX_CHANNELS = 4  # a first conv reading at most this many channels is a candidate
GAIN = 0.9  # "measured": keep it only when stage 0 takes at most this share of its INT8 time


@dataclass(frozen=True)
class StemChoice:
    """What was measured for one format's stage 0, and whether the float stem is used."""

    format: str
    layer: str
    int8_us: float
    float_us: float
    agreement: float  # top-1 agreement of the stage's logits, float stem vs INT8
    used: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "layer": self.layer,
            "int8_us": round(self.int8_us, 2),
            "float_us": round(self.float_us, 2),
            "agreement": round(self.agreement, 4),
            "used": self.used,
            "reason": self.reason,
        }


# --- TFLite -------------------------------------------------------------------------------


def _fu() -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils


def _opcode(model: Any, fu: Any, builtin: int) -> int:
    """Index of ``builtin`` ((DE)QUANTIZE on int8) in the operator codes, added if missing."""
    for i, code in enumerate(model.operatorCodes):
        if fu.get_builtin_code_from_operator_code(code) == builtin:
            code.version = max(int(code.version), 2)
            return i
    code = fu.schema_fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 2  # (DE)QUANTIZE of int8 tensors: version 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _buffer(model: Any, fu: Any, data: np.ndarray | None) -> int:
    buf = fu.schema_fb.BufferT()
    if data is not None:
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    model.buffers.append(buf)
    return len(model.buffers) - 1


def _tensor(sg: Any, fu: Any, like: Any, name: str, buffer: int, shape: Any = None) -> int:
    t = fu.schema_fb.TensorT()
    t.name = name.encode()
    t.shape = np.array(like.shape if shape is None else shape, dtype=np.int32)
    if shape is None and like.shapeSignature is not None:
        t.shapeSignature = np.array(like.shapeSignature, dtype=np.int32)
    t.type = fu.schema_fb.TensorType.FLOAT32
    t.buffer = buffer
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _buffer_array(model: Any, tensor: Any, dtype: Any) -> np.ndarray | None:
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    return np.frombuffer(bytes(bytearray(data)), dtype=dtype).reshape(tuple(tensor.shape))


def float_stem_tflite(flatbuffer: bytes) -> tuple[bytes, str] | None:
    """``flatbuffer`` with its first convolution in float, and that layer's description.

    None when the model does not start with an INT8 CONV_2D or DEPTHWISE_CONV_2D on the
    graph input with at most :data:`MAX_CHANNELS` channels and constant per-channel weights.
    """
    fu = _fu()
    fb = fu.schema_fb
    model = fu.read_model_from_bytearray(bytearray(flatbuffer))
    if len(model.subgraphs) != 1:
        return None
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1:
        return None
    x_index = int(sg.inputs[0])
    convs = {fb.BuiltinOperator.CONV_2D: 0, fb.BuiltinOperator.DEPTHWISE_CONV_2D: 3}
    found = [(i, o) for i, o in enumerate(sg.operators) if x_index in list(o.inputs)]
    if not found:
        return None
    pos, op = found[0]
    if len(op.inputs) < 2 or int(op.inputs[0]) != x_index:
        return None
    builtin = fu.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
    if builtin not in convs:
        return None
    x, w = sg.tensors[x_index], sg.tensors[op.inputs[1]]
    y = sg.tensors[op.outputs[0]]
    b = sg.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    int8 = fb.TensorType.INT8
    if x.type != int8 or w.type != int8 or y.type != int8 or int(x.shape[-1]) > MAX_CHANNELS:
        return None
    wq = _buffer_array(model, w, np.int8)
    if wq is None or w.quantization is None or w.quantization.scale is None:
        return None
    axis = convs[builtin]
    scale = np.asarray(w.quantization.scale, np.float32)
    zp = np.asarray(w.quantization.zeroPoint if w.quantization.zeroPoint is not None else [0])
    if np.any(zp != 0) or scale.size not in (1, wq.shape[axis]):
        return None
    shape = [1] * wq.ndim
    shape[axis] = -1
    wf = wq.astype(np.float32) * scale.reshape(shape if scale.size > 1 else [1] * wq.ndim)
    bf = None
    if b is not None:
        bq = _buffer_array(model, b, np.int32)
        if bq is None or b.quantization is None or b.quantization.scale is None:
            return None
        bf = bq.astype(np.float32) * np.asarray(b.quantization.scale, np.float32)

    xf = _tensor(sg, fu, x, "ek_stem_input_float", 0)
    wt = _tensor(sg, fu, w, "ek_stem_weights_float", _buffer(model, fu, wf))
    inputs = [xf, wt]
    if bf is not None:
        inputs.append(_tensor(sg, fu, b, "ek_stem_bias_float", _buffer(model, fu, bf)))
    yf = _tensor(sg, fu, y, "ek_stem_output_float", 0)

    dq = fb.OperatorT()
    dq.opcodeIndex = _opcode(model, fu, fb.BuiltinOperator.DEQUANTIZE)
    dq.inputs, dq.outputs = np.array([x_index], np.int32), np.array([xf], np.int32)
    conv = copy.deepcopy(op)
    conv.inputs, conv.outputs = np.array(inputs, np.int32), np.array([yf], np.int32)
    q = fb.OperatorT()
    q.opcodeIndex = _opcode(model, fu, fb.BuiltinOperator.QUANTIZE)
    q.inputs, q.outputs = np.array([yf], np.int32), np.array([op.outputs[0]], np.int32)
    sg.operators[pos : pos + 1] = [dq, conv, q]
    kind = "CONV_2D" if builtin == fb.BuiltinOperator.CONV_2D else "DEPTHWISE_CONV_2D"
    k = "x".join(str(int(s)) for s in wq.shape[1:3])
    what = f"{kind} {k}, {int(x.shape[-1])} -> {int(y.shape[-1])} channels"
    return bytes(fu.convert_object_to_bytearray(model)), what


# --- ONNX ---------------------------------------------------------------------------------

_LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def float_stem_onnx(proto: Any) -> tuple[Any, str] | None:
    """A copy of a QDQ ONNX model with its first Conv in float, and that layer's description.

    The input's DequantizeLinear becomes Cast, Sub and Mul (the same arithmetic, which
    onnxruntime does not fold back into an INT8 kernel), the Q/DQ pairs between it and the
    Conv go, and the Conv takes the dequantized weights and bias as float constants. Its
    output keeps its QuantizeLinear. The input's quantization moves to the metadata key
    :data:`INPUT_QUANT_KEY`. None when the model has no such first Conv.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(proto)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        return None
    x = inputs[0].name
    producers = {o: n for n in g.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    # the first Conv: reached from the input through Q/DQ and layout ops only
    seen, frontier, conv = {x}, [x], None
    while frontier and conv is None:
        t = frontier.pop(0)
        for n in users.get(t, []):
            if n.op_type == "Conv" and n.input[0] == t:
                conv = n
                break
            if n.op_type in _LAYOUT | {"QuantizeLinear", "DequantizeLinear"} and n.input[0] == t:
                for o in n.output:
                    if o not in seen:
                        seen.add(o)
                        frontier.append(o)
            else:
                return None  # compute before any Conv: not a plain stem
    if conv is None:
        return None
    dq_x = [n for n in users.get(x, []) if n.op_type == "DequantizeLinear"]
    wdq = producers.get(conv.input[1])
    if len(dq_x) != 1 or wdq is None or wdq.op_type != "DequantizeLinear":
        return None
    wq, ws = const(wdq.input[0]), const(wdq.input[1])
    wz = const(wdq.input[2]) if len(wdq.input) > 2 and wdq.input[2] else None
    if wq is None or ws is None or wq.ndim != 4:
        return None
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    if wq.shape[1] * group > MAX_CHANNELS:
        return None
    per_channel = (-1, 1, 1, 1)
    w_zero = np.zeros(1, np.float32) if wz is None else wz.astype(np.float32).reshape(-1)
    w_scale = ws.astype(np.float32).reshape(-1)
    wf = (
        wq.astype(np.float32) - w_zero.reshape(per_channel if w_zero.size > 1 else (1, 1, 1, 1))
    ) * (w_scale.reshape(per_channel if w_scale.size > 1 else (1, 1, 1, 1)))
    bf = None
    if len(conv.input) > 2 and conv.input[2]:
        bdq = producers.get(conv.input[2])
        if bdq is not None and bdq.op_type == "DequantizeLinear":
            bq, bs = const(bdq.input[0]), const(bdq.input[1])
            if bq is None or bs is None:
                return None
            bf = bq.astype(np.float32) * bs.astype(np.float32)
        elif conv.input[2] in inits:
            bf = const(conv.input[2]).astype(np.float32)  # type: ignore[union-attr]
        else:
            return None

    # The input's dequantization folds into the Conv: conv(s * (x - z)) = s * conv(x) -
    # s * z * sum(w), exact once the padding is explicit, with the raw zero point as the
    # pad value (padding the dequantized input with 0 is padding the raw input with z).
    dq = dq_x[0]
    xs, xz = const(dq.input[1]), const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if xs is None or xs.size != 1:
        return None
    chain = [n for n in g.node if any(o in seen for o in n.output)]
    if any(len(users.get(o, [])) != 1 for n in chain for o in n.output):
        return None  # the dequantized input feeds something besides this Conv
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    pads = list(attrs.get("pads", [0] * 4))
    xz_arr = np.zeros((), np.uint8) if xz is None else xz
    scale, x_zero = float(np.asarray(xs).reshape(())), float(np.asarray(xz_arr).reshape(()))
    wf = wf.astype(np.float32)
    bias = np.zeros(wf.shape[0], np.float32) if bf is None else bf.astype(np.float32)
    bias = bias - scale * x_zero * wf.reshape(wf.shape[0], -1).sum(axis=1)
    g.initializer.extend(
        [
            numpy_helper.from_array((wf * scale).astype(np.float32), "ek_stem_w"),
            numpy_helper.from_array(bias.astype(np.float32), "ek_stem_b"),
            numpy_helper.from_array(
                np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), "ek_stem_pads"
            ),
            numpy_helper.from_array(np.array(x_zero, np.float32), "ek_stem_pad_value"),
        ]
    )
    # drop the Q/DQ pairs of the chain: Cast replaces the input's DequantizeLinear, the
    # layout ops stay, and the Conv reads their float output through an explicit Pad
    for n in chain:
        if n.op_type == "QuantizeLinear":
            d = users[n.output[0]][0]
            for u in users.get(d.output[0], []):
                for i, name in enumerate(u.input):
                    if name == d.output[0]:
                        u.input[i] = n.input[0]
            g.node.remove(n)
            g.node.remove(d)
    cast = helper.make_node("Cast", [x], [dq.output[0]], to=onnx.TensorProto.FLOAT)
    g.node.insert(list(g.node).index(dq), cast)
    g.node.remove(dq)
    at = list(g.node).index(conv)
    pad = helper.make_node(
        "Pad", [conv.input[0], "ek_stem_pads", "ek_stem_pad_value"], ["ek_stem_padded"]
    )
    g.node.insert(at, pad)
    conv.input[0] = "ek_stem_padded"
    conv.input[1] = "ek_stem_w"
    if len(conv.input) > 2:
        conv.input[2] = "ek_stem_b"
    else:
        conv.input.append("ek_stem_b")
    for a in conv.attribute:
        if a.name == "pads":
            a.ints[:] = [0, 0, 0, 0]
    _prune_unused(g)
    dtype = np.dtype(xz_arr.dtype).name
    entry = model.metadata_props.add()
    entry.key, entry.value = INPUT_QUANT_KEY, f"{scale!r} {int(x_zero)} {dtype}"
    kernel = "x".join(str(int(s)) for s in wq.shape[2:])
    return model, f"Conv {kernel}, {wq.shape[1] * group} -> {wq.shape[0]} channels"


# --- measuring ----------------------------------------------------------------------------


def _interleaved(calls: Sequence[Callable[[], Any]], n: int = 200, rounds: int = 9) -> list[float]:
    """Median microseconds per call of each of ``calls``, timed in alternating rounds."""
    for c in calls:
        for _ in range(max(20, n // 5)):
            c()
    runs: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for k, c in enumerate(calls):
            t = time.perf_counter()
            for _ in range(n):
                c()
            runs[k].append((time.perf_counter() - t) / n * 1e6)
    return [float(np.median(r)) for r in runs]


def _tflite_runner(content: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    inp = it.get_input_details()[0]
    outs = sorted(it.get_output_details(), key=lambda d: str(d["name"]))
    it.resize_tensor_input(inp["index"], [1, *inp["shape_signature"][1:]])
    it.allocate_tensors()

    def run(x: np.ndarray) -> list[np.ndarray]:
        it.set_tensor(inp["index"], x)
        it.invoke()
        return [it.get_tensor(d["index"]) for d in outs]

    return run


def _onnx_runner(content: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime as ort

    from edgekit.runtime.backends import onnxruntime as backend

    # the runtime's session options (exact INT8 kernels on x86 without VNNI): time what runs
    opts = backend.session_options(1)
    sess = ort.InferenceSession(content, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = sorted(o.name for o in sess.get_outputs())

    def run(x: np.ndarray) -> list[np.ndarray]:
        return list(sess.run(outs, {name: x}))

    return run


def choose(
    fmt: str, int8: bytes, stem: bytes, layer: str, samples: np.ndarray, *, mode: str = "auto"
) -> StemChoice:
    """Time stage 0 as INT8 and with the float stem on this host and decide.

    ``samples`` are stage 0's 8-bit inputs, one per row (the calibration images); the
    logits (the output whose name sorts last) of both forms are compared on them.
    ``mode`` "auto" keeps the float stem whenever the outputs agree; "measured" only when
    it is also at least ``1 - GAIN`` faster here.
    """
    make = _tflite_runner if fmt == "tflite" else _onnx_runner
    a, b = make(int8), make(stem)
    xs = [samples[i : i + 1] for i in range(len(samples))]
    same = [int(np.argmax(a(x)[-1].reshape(-1)) == np.argmax(b(x)[-1].reshape(-1))) for x in xs]
    agreement = float(np.mean(same)) if same else 1.0
    x0 = xs[0] if xs else np.zeros((1,), samples.dtype)
    t_int8, t_float = _interleaved([lambda: a(x0), lambda: b(x0)])
    if agreement < 0.99:
        used, why = False, f"the outputs disagree on {1 - agreement:.1%} of the calibration inputs"
    elif mode != "measured":
        used, why = True, f"it reads at most {MAX_CHANNELS} channels"
    elif t_float <= GAIN * t_int8:
        used, why = True, "measured faster here"
    else:
        used, why = False, f"measured not {1 - GAIN:.0%} faster here"
    return StemChoice(fmt, layer, t_int8, t_float, agreement, used, why)


def _rewrite(fmt: str, content: bytes) -> tuple[bytes, str] | None:
    if fmt == "tflite":
        return float_stem_tflite(content)
    import onnx

    done = float_stem_onnx(onnx.load_from_string(content))
    return None if done is None else (done[0].SerializeToString(), done[1])


def apply_float_stem(
    fmt: str, stage0: Path, full: Path | None, samples: np.ndarray, *, mode: str = "auto"
) -> StemChoice | None:
    """Rewrite ``stage0`` (and the unsplit ``full``) in place when :func:`choose` keeps the
    float stem; None when the model has no first conv to rewrite."""
    int8 = stage0.read_bytes()
    done = _rewrite(fmt, int8)
    if done is None:
        return None
    choice = choose(fmt, int8, done[0], done[1], samples, mode=mode)
    if not choice.used:
        return choice
    full_done = _rewrite(fmt, full.read_bytes()) if full is not None else None
    if full is not None and full_done is None:
        return dataclasses.replace(
            choice, used=False, reason="the unsplit model's first conv could not be rewritten"
        )
    stage0.write_bytes(done[0])
    if full is not None and full_done is not None:
        full.write_bytes(full_done[0])
    return choice
