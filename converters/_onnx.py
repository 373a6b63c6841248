"""Export tf-keras models to ONNX: float, and INT8 (QDQ) with 8-bit graph inputs and outputs.

The INT8 export is what an ONNX stage of an edge package runs. Its graph input and named
outputs are raw 8-bit tensors whose scale and zero point are fixed by the caller (the TFLite
side decides them), so the bytes one stage returns can be fed to the next stage as they are.

Pipeline: tf2onnx (float) -> ``quant_pre_process`` -> ``quantize_static`` (QDQ, calibrated,
with ``TensorQuantOverrides`` pinning the I/O quantization) -> graph surgery that drops the
QuantizeLinear after the float input and the DequantizeLinear before each float output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, require
from edgekit._package import QuantParams

__all__ = [
    "INPUT_NAME",
    "export_float_onnx",
    "export_int8_onnx",
    "quantize_qdq",
    "read_io_quant",
]

INPUT_NAME = "input"
BATCH_DIM = "batch"

_CALIB_BATCH = 16
# onnx.TensorProto.UINT8 / INT8, spelled out so this module imports without onnx.
_ELEM_TYPE = {"uint8": 2, "int8": 3}
#: metadata_props key of a graph whose input normalisation is folded into its input's
#: DequantizeLinear: "SCALE ZERO_POINT" of the 8-bit input as pixels (the stage contract's
#: grid, what the runtime feeds), which that DequantizeLinear no longer shows.
_INPUT_GRID_KEY = "edgekit.input_pixel_grid"
_INPUT_QUANT_KEY = "edgekit.input_quant"  # input grid of a float first conv (_stem)
_QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
# Ops whose QDQ output reuses the scale/zero point of their (first) input in ORT. An override
# on their output would be ignored, so it is also put on the tensor they read.
_SHARED_QPARAM_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Slice",
        "MaxPool",
        "AveragePool",
        "Resize",
        "Pad",
    }
)


def _onnx_module() -> Any:
    return require("onnx", "convert", purpose="ONNX export")


def _keras_input(model: Any) -> Any:
    """The single input tensor of a tf-keras model, or ConversionError."""
    keras = require("tf_keras", "convert", purpose="ONNX export")
    if not isinstance(model, keras.Model):
        raise ConversionError(
            f"expected a tf-keras Model, got {type(model).__name__}",
            hint="build or load the model with `import tf_keras as keras` "
            "(TF_USE_LEGACY_KERAS=1 before importing tensorflow)",
        )
    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        raise ConversionError(
            f"the model has {len(inputs)} inputs; ONNX export needs exactly one",
            hint="export a Functional model with a single image/features input",
        )
    return inputs[0]


_ERFC_REGISTERED = False


def _register_erfc(tf2onnx: Any) -> None:
    """Teach tf2onnx ``Erfc`` (as ``1 - Erf``): tf-keras's exact GELU (ConvNeXt, ``activation=
    "gelu"``) computes ``0.5 * x * erfc(-x / sqrt(2))``, and tf2onnx has no handler for it."""
    global _ERFC_REGISTERED
    if _ERFC_REGISTERED:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            node.type = "Erf"
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            ctx.insert_new_node_on_output(
                "Sub",
                node.output[0],
                name=utils.make_name(f"{node.name}_erfc"),
                inputs=[one.output[0], node.output[0]],
            )

    _ERFC_REGISTERED = True


def _float_model_proto(model: Any, opset: int) -> Any:
    """Convert ``model`` with tf2onnx; input named ``input``, outputs named after Keras outputs."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    tf = require("tensorflow", "convert", purpose="ONNX export")
    inp = _keras_input(model)
    tf2onnx = require("tf2onnx", "convert", purpose="ONNX export")
    _register_erfc(tf2onnx)
    onnx = _onnx_module()
    shape = (None, *tuple(inp.shape)[1:])
    spec = (tf.TensorSpec(shape, inp.dtype, name=INPUT_NAME),)
    try:
        with _plain_grouped_convs(model):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        # tf2onnx continues past ops it cannot convert; the checker catches those.
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ConversionError(
            f"tf2onnx could not convert model {getattr(model, 'name', '?')!r}: {exc}",
            hint="the model may use a layer tf2onnx does not support; "
            f"try another opset (now {opset}) or replace the layer",
        ) from exc
    want = list(model.output_names)
    got = [o.name for o in proto.graph.output]
    if got != want:
        raise ConversionError(
            f"ONNX outputs {got} do not match the Keras output names {want}",
            hint="give every output layer a unique name",
        )
    _name_batch_dims(proto)
    _unshare_initializers(proto)
    return proto


def _unshare_initializers(proto: Any) -> int:
    """Give every node input its own copy of an initializer that several inputs read.

    TensorFlow merges constants with equal values, which a model with untrained or reset
    batch norms (zero biases, unit variances) has many of; tf2onnx then leaves batch norms
    unfolded and ORT's quantizer writes one quantized initializer per use under the same
    name, which ``InferenceSession`` refuses ("Attempt to replace the existing tensor").
    Copies cost bytes only for tensors that were shared. Returns the number of copies made.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        for pos, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in seen:
                seen.add(name)
                continue
            new, i = f"{name}__ek{copies}", copies
            while new in taken:
                i += 1
                new = f"{name}__ek{i}"
            dup = graph.initializer.add()
            dup.CopyFrom(inits[name])
            dup.name = new
            taken.add(new)
            node.input[pos] = new
            copies += 1
    return copies


@contextlib.contextmanager
def _plain_grouped_convs(model: Any) -> Iterator[None]:
    """Trace grouped convolutions as plain Conv2D ops while tf2onnx converts ``model``.

    tf-keras runs a convolution with ``groups > 1`` (RegNet, ResNeXt) in an XLA-compiled
    function, which reaches tf2onnx as a PartitionedCall it cannot convert. The op inside
    is an ordinary grouped Conv2D, which ONNX's Conv expresses with ``group``.
    """
    patched = []
    for layer in _all_layers(model):
        if getattr(layer, "groups", 1) > 1 and hasattr(layer, "_jit_compiled_convolution_op"):
            layer._jit_compiled_convolution_op = layer.convolution_op
            patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer._jit_compiled_convolution_op


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _name_batch_dims(proto: Any) -> None:
    """Give the free leading dimension of the graph inputs/outputs one shared name."""
    for vi in [*proto.graph.input, *proto.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def export_float_onnx(model: Any, path: Path, *, opset: int = 17) -> None:
    """Write the float ONNX version of a tf-keras Functional ``model`` to ``path``.

    The graph input is named ``input`` (batch dimension free) and the outputs keep the names
    of the Keras output layers.
    """
    proto = _float_model_proto(model, opset)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _onnx_module().save(proto, str(path))


def export_int8_onnx(
    model: Any,
    path: Path,
    calib: np.ndarray,
    *,
    io_quant: Mapping[str, QuantParams],
    activation_type: str = "uint8",
    per_channel: bool = True,
    reduce_range: bool = False,
    opset: int = 17,
) -> dict[str, QuantParams]:
    """Write an INT8 QDQ ONNX model whose graph input and outputs are 8-bit tensors.

    ``calib`` is float32 calibration data shaped like the model input (NHWC, batch first).
    ``io_quant`` maps ``"input"`` and output names to the quantization (any 8-bit dtype, e.g.
    int8 from TFLite) those tensors must use; it is converted to ``activation_type``
    (``"uint8"``, best on x86, or ``"int8"``, best on ARM). Outputs missing from ``io_quant``
    keep the range ORT calibrates. ``reduce_range`` quantizes weights to 7 bits. It is off:
    the file keeps full 8-bit weights, as TFLite does; on x86 CPUs without VNNI, ORT's U8S8
    kernels would saturate 16-bit pair sums on them, which sessions avoid with the
    ``session.x64quantprecision`` option (see ``edgekit.runtime.backends.onnxruntime``).
    Returns the quantization actually written for the input and every output, in
    ``activation_type``.
    """
    if activation_type not in _ELEM_TYPE:
        raise ConversionError(
            f"activation_type must be 'uint8' or 'int8', not {activation_type!r}",
            hint="use 'uint8' for x86 targets and 'int8' for ARM targets",
        )
    onnx = _onnx_module()
    inp = _keras_input(model)
    wanted = _target_quant(io_quant, list(model.output_names), activation_type)
    calib = _check_calib(calib, tuple(inp.shape)[1:])
    proto = _float_model_proto(model, opset)

    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as tmp:
        q_path = Path(tmp) / "q.onnx"
        qmodel = quantize_qdq(
            proto,
            calib,
            pinned=wanted,
            activation_type=activation_type,
            per_channel=per_channel,
            reduce_range=reduce_range,
            purpose="INT8 ONNX export",
            hint="check that calib holds representative, finite samples",
        )
        _make_io_8bit(qmodel, _ELEM_TYPE[activation_type], wanted[INPUT_NAME])
        check_int8(qmodel, "the INT8 ONNX model", "this is a bug in edgekit's ONNX graph surgery")
        onnx.save(qmodel, str(q_path))
        used = read_io_quant(q_path)
        check_pinned(used, wanted, "ONNX")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(q_path), str(path))
    return used


def quantize_qdq(
    proto: Any,
    calib: np.ndarray,
    *,
    pinned: Mapping[str, QuantParams],
    activation_type: str,
    symmetric: bool = False,
    per_channel: bool = True,
    reduce_range: bool = False,
    purpose: str,
    hint: str,
    what: str = "",
    check_graph: Callable[[Any], None] | None = None,
) -> Any:
    """ONNX Runtime's static QDQ quantization of float ``proto``: the quantized ModelProto.

    The one place edgekit calls ``quant_pre_process`` and ``quantize_static``. ``calib``:
    float32 inputs of the graph's ``input``. ``pinned``: tensor name -> the quantization it
    must get (already in ``activation_type``). ``symmetric``: TensorRT's form (zero points 0,
    float biases, Relu/Clip kept explicit). ``check_graph`` sees the pre-processed graph
    before quantizing (to refuse a graph that lost a pinned tensor). A failure of ORT's
    quantizer raises :class:`ConversionError` prefixed by ``what``, with ``hint``.
    """
    onnx = _onnx_module()
    oq = require("onnxruntime.quantization", "convert", purpose=purpose)
    shape_inf = require("onnxruntime.quantization.shape_inference", "convert", purpose=purpose)
    with tempfile.TemporaryDirectory(prefix="edgekit-qdq-") as tmp:
        fp, pp, qp = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save(proto, str(fp))
        # Symbolic shape inference needs sympy and helps only transformer-like graphs.
        shape_inf.quant_pre_process(str(fp), str(pp), skip_symbolic_shape=True)
        pre = onnx.load(str(pp))
        if check_graph is not None:
            check_graph(pre.graph)
        extra: dict[str, Any] = {
            "TensorQuantOverrides": _overrides(pre.graph, pinned, activation_type),
            # Quantize the ops right after the input (Transpose/Reshape) too, so the input
            # gets a QuantizeLinear with the pinned parameters.
            "ForceQuantizeNoInputCheck": True,
            # Symmetric ranges do not clip at 0: Relu/Clip must stay explicit.
            "QDQKeepRemovableActivations": symmetric or _must_keep_activations(pre.graph, pinned),
        }
        if symmetric:
            extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)
        qt = oq.QuantType
        try:
            oq.quantize_static(
                str(pp),
                str(qp),
                _calibration_reader(oq.CalibrationDataReader, np.asarray(calib, np.float32)),
                quant_format=oq.QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=qt.QUInt8 if activation_type == "uint8" else qt.QInt8,
                weight_type=qt.QInt8,
                extra_options=extra,
            )
        except Exception as exc:
            kind = " (symmetric, for TensorRT)" if symmetric else ""
            raise ConversionError(
                f"{what}ONNX Runtime static quantization{kind} failed: {exc}", hint=hint
            ) from exc
        return onnx.load(str(qp))


def check_int8(qmodel: Any, what: str, hint: str) -> None:
    """ONNX's full check of a quantized model after edgekit's edits of its edges."""
    try:
        _onnx_module().checker.check_model(qmodel, full_check=True)
    except Exception as exc:
        raise ConversionError(
            f"{what} is invalid after edgekit made its 8-bit edges: {exc}",
            hint=hint + "; report it with the model",
        ) from exc


def check_pinned(
    used: Mapping[str, QuantParams], wanted: Mapping[str, QuantParams], what: str
) -> None:
    """Raise unless every pinned tensor in ``used`` got the quantization it was given."""
    for name, q in wanted.items():
        # Scales are stored as float32.
        if name in used and used[name] != QuantParams(
            float(np.float32(q.scale)), q.zero_point, q.dtype
        ):
            raise ConversionError(
                f"{what} tensor {name!r} was quantized with {used[name]}, not {q}",
                hint="ONNX Runtime ignored the pinned quantization; the op producing this "
                "tensor may share its input's quantization parameters",
            )


def _target_quant(
    io_quant: Mapping[str, QuantParams], outputs: list[str], activation_type: str
) -> dict[str, QuantParams]:
    """Validate ``io_quant`` and convert it to ``activation_type``."""
    known = [INPUT_NAME, *outputs]
    unknown = sorted(set(io_quant) - set(known))
    if unknown or INPUT_NAME not in io_quant:
        raise ConversionError(
            f"io_quant must give {INPUT_NAME!r} and may give outputs {outputs}; "
            f"got {sorted(io_quant)}",
            hint="key io_quant by 'input' and the Keras output layer names",
        )
    lo, hi = _QRANGE[activation_type]
    wanted = {}
    for name, q in io_quant.items():
        if q.dtype not in _QRANGE:
            raise ConversionError(f"{name!r}: unsupported quantization dtype {q.dtype!r}")
        qa = q.as_dtype(activation_type)
        if not (q.scale > 0 and np.isfinite(q.scale) and lo <= qa.zero_point <= hi):
            raise ConversionError(
                f"{name!r}: invalid quantization {q} for {activation_type}",
                hint="scale must be positive and the zero point inside the 8-bit range",
            )
        wanted[name] = qa
    return wanted


def _check_calib(calib: np.ndarray, sample_shape: tuple[Any, ...]) -> np.ndarray:
    arr = np.asarray(calib, dtype=np.float32)
    fits = arr.ndim == len(sample_shape) + 1 and all(
        d is None or d == a for d, a in zip(sample_shape, arr.shape[1:])
    )
    if not fits or len(arr) == 0:
        raise ConversionError(
            f"calibration data of shape {arr.shape} does not match the model input "
            f"(batch, {', '.join(map(str, sample_shape))})",
            hint="pass a non-empty float32 batch of preprocessed samples",
        )
    return arr


def _calibration_reader(base: type, calib: np.ndarray) -> Any:
    """A CalibrationDataReader (subclass of ORT's ``base``) over ``calib`` in small batches."""

    class _Reader(base):
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = (
                {INPUT_NAME: calib[i : i + _CALIB_BATCH]}
                for i in range(0, len(calib), _CALIB_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return _Reader()


def _producers(graph: Any) -> dict[str, Any]:
    return {out: n for n in graph.node for out in n.output}


def _prune_unused(graph: Any) -> None:
    """Drop the nodes whose outputs nothing reads, then the initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for i in list(graph.initializer):
        if i.name not in read:
            graph.initializer.remove(i)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    return users


def _overrides(
    graph: Any, wanted: Mapping[str, QuantParams], activation_type: str
) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` pinning the I/O tensors (and what shares their parameters)."""
    zp_type = np.uint8 if activation_type == "uint8" else np.int8
    producers = _producers(graph)
    pinned: dict[str, QuantParams] = {}
    for name, q in wanted.items():
        tensor = name
        while True:
            if pinned.setdefault(tensor, q) != q:
                raise ConversionError(
                    f"tensor {tensor!r} would need two quantizations ({pinned[tensor]} and {q})",
                    hint="outputs computed from one another by a reshape/transpose must share "
                    "scale and zero point",
                )
            node = producers.get(tensor)
            if node is None or node.op_type not in _SHARED_QPARAM_OPS:
                break
            tensor = node.input[0]
    return {
        t: [{"scale": np.array(q.scale, np.float32), "zero_point": np.array(q.zero_point, zp_type)}]
        for t, q in pinned.items()
    }


def _must_keep_activations(graph: Any, wanted: Mapping[str, QuantParams]) -> bool:
    """Whether ORT must keep Relu/Clip explicit because a pinned range does not clip like them.

    ORT drops a Relu/Clip feeding a QuantizeLinear, relying on the 8-bit range to do the
    clipping. That is only right when the range starts at 0 (ends at the Clip maximum).
    """
    onnx = _onnx_module()
    producers = _producers(graph)
    inits = {i.name: i for i in graph.initializer}
    for name, q in wanted.items():
        node = producers.get(name)
        while node is not None and node.op_type in _SHARED_QPARAM_OPS:
            node = producers.get(node.input[0])
        if node is None or node.op_type not in ("Relu", "Clip"):
            continue
        lo, hi = _QRANGE[q.dtype]
        rmin, rmax = q.scale * (lo - q.zero_point), q.scale * (hi - q.zero_point)
        cmin, cmax = 0.0, np.inf
        if node.op_type == "Clip":
            # Clip's optional min/max inputs; absent or non-constant means unbounded.
            bounds = [
                float(onnx.numpy_helper.to_array(inits[n])) if n in inits else None
                for n in node.input[1:3]
            ]
            bounds += [None] * (2 - len(bounds))
            cmin = -np.inf if bounds[0] is None else bounds[0]
            cmax = np.inf if bounds[1] is None else bounds[1]
        half_step = q.scale / 2
        if rmin < cmin - half_step or rmax > cmax + half_step:
            return True
    return False


def _make_io_8bit(proto: Any, elem_type: int, input_quant: QuantParams) -> None:
    """Turn the QDQ model's float input/outputs into the 8-bit tensors around them.

    Input:  input(float) -> Q -> X_q -> DQ ...   becomes   input(8-bit) -> DQ ...
    Output: ... Q -> Y_q -> DQ -> out(float)      becomes   ... Q -> out(8-bit)
    A float output that other nodes also read keeps its DQ under a new name for those nodes.
    When ORT left the input unquantized (its first op is one ORT runs in float, such as
    Relu or GlobalAveragePool), a DequantizeLinear with ``input_quant`` is put in front.
    """
    graph = proto.graph
    users = _consumers(graph)
    remove: list[Any] = []

    def rename(old: str, new: str) -> None:
        for n in graph.node:
            for seq in (n.input, n.output):
                for i, name in enumerate(seq):
                    if name == old:
                        seq[i] = new

    (inp,) = graph.input
    quants = [n for n in users.get(inp.name, []) if n.op_type == "QuantizeLinear"]
    others = [n for n in users.get(inp.name, []) if n.op_type != "QuantizeLinear"]
    if not quants:
        _dequantize_input(graph, inp, others, elem_type, input_quant)
        _make_outputs_8bit(graph, elem_type, remove)
        return
    first = quants[0]
    for q in quants:
        _check_elem_type(graph, q, elem_type, inp.name)
        if list(q.input[1:]) != list(first.input[1:]):
            raise ConversionError(
                "ONNX Runtime quantized the model input in more than one way",
                hint="report this with the model; the input must have one scale/zero point",
            )
        rename(q.output[0], inp.name)
        remove.append(q)
    if others:
        deq = f"{inp.name}_dequantized"
        for n in others:
            n.input[:] = [deq if i == inp.name else i for i in n.input]
        node = _onnx_module().helper.make_node(
            "DequantizeLinear", [inp.name, *first.input[1:]], [deq], name=f"{deq}_node"
        )
        graph.node.insert(0, node)
    inp.type.tensor_type.elem_type = elem_type
    _make_outputs_8bit(graph, elem_type, remove)


def _dequantize_input(
    graph: Any, inp: Any, readers: list[Any], elem_type: int, q: QuantParams
) -> None:
    onnx = _onnx_module()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    zp_dtype = np.uint8 if elem_type == _ELEM_TYPE["uint8"] else np.int8
    scale, zp = f"{inp.name}_ek_scale", f"{inp.name}_ek_zero_point"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(q.scale, np.float32), scale),
            numpy_helper.from_array(np.array(q.zero_point, zp_dtype), zp),
        ]
    )
    deq = f"{inp.name}_dequantized"
    for n in readers:
        n.input[:] = [deq if i == inp.name else i for i in n.input]
    node = helper.make_node("DequantizeLinear", [inp.name, scale, zp], [deq], name=f"{deq}_node")
    graph.node.insert(0, node)
    inp.type.tensor_type.elem_type = elem_type


def _make_outputs_8bit(graph: Any, elem_type: int, remove: list[Any]) -> None:
    def rename(old: str, new: str) -> None:
        for n in graph.node:
            for seq in (n.input, n.output):
                for i, name in enumerate(seq):
                    if name == old:
                        seq[i] = new

    producers = _producers(graph)
    users = _consumers(graph)
    for out in graph.output:
        dq = producers.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise ConversionError(
                f"ONNX Runtime did not quantize the output {out.name!r}",
                hint="the output layer may be an op ORT does not quantize",
            )
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            raise ConversionError(f"output {out.name!r} is not produced by a QuantizeLinear")
        _check_elem_type(graph, q, elem_type, out.name)
        if users.get(out.name):
            dq.output[0] = f"{out.name}_dequantized"
            for n in users[out.name]:
                n.input[:] = [dq.output[0] if i == out.name else i for i in n.input]
        else:
            remove.append(dq)
        rename(dq.input[0], out.name)
        out.type.tensor_type.elem_type = elem_type

    for n in remove:
        graph.node.remove(n)
    # Intermediate type annotations are optional and some are now stale; shape inference
    # (in the checker and in ORT) recomputes them.
    del graph.value_info[:]


def _check_elem_type(graph: Any, q: Any, elem_type: int, tensor: str) -> None:
    zp = next((i for i in graph.initializer if len(q.input) > 2 and i.name == q.input[2]), None)
    if zp is None or zp.data_type != elem_type:
        raise ConversionError(
            f"the QuantizeLinear of {tensor!r} does not produce the requested 8-bit type",
            hint="report this with the model; ORT quantized the tensor unexpectedly",
        )


def read_io_quant(path: Path) -> dict[str, QuantParams]:
    """Scale and zero point of the 8-bit graph input and outputs of an INT8 ONNX file.

    They are read from the DequantizeLinear reading the input and the QuantizeLinear
    producing each output.
    """
    onnx = _onnx_module()
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ConversionError(f"cannot read ONNX file {path}: {exc}") from exc
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    users, producers = _consumers(graph), _producers(graph)
    dtypes = {v: k for k, v in _ELEM_TYPE.items()}

    def params(node: Any, tensor: str) -> QuantParams:
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if scale_name not in inits or (zp_name and zp_name not in inits):
            raise ConversionError(f"quantization of {tensor!r} in {path} is not constant")
        scale = onnx.numpy_helper.to_array(inits[scale_name])
        zp = onnx.numpy_helper.to_array(inits[zp_name]) if zp_name else np.uint8(0)
        if scale.size != 1:
            raise ConversionError(f"{tensor!r} in {path} is not quantized per tensor")
        return QuantParams(float(scale.reshape(())), int(zp.reshape(())), str(zp.dtype))

    result: dict[str, QuantParams] = {}
    grid = next((p.value for p in proto.metadata_props if p.key == _INPUT_GRID_KEY), None)
    stem = next((p.value for p in proto.metadata_props if p.key == _INPUT_QUANT_KEY), None)
    for inp in graph.input:
        if inp.name in inits:
            continue
        dq = next((n for n in users.get(inp.name, []) if n.op_type == "DequantizeLinear"), None)
        if inp.type.tensor_type.elem_type not in dtypes or (dq is None and stem is None):
            raise ConversionError(f"input {inp.name!r} of {path} is not an 8-bit tensor")
        if dq is not None:
            result[inp.name] = params(dq, inp.name)
        else:  # a float first conv (converters/_stem) reads the input through a Cast
            scale, zero, dtype = str(stem).split()
            result[inp.name] = QuantParams(float(scale), int(zero), dtype)
        if grid is not None:  # normalisation folded into the DQ: the 8-bit values are pixels
            scale, zero = grid.split()
            result[inp.name] = QuantParams(float(scale), int(zero), result[inp.name].dtype)
    for out in graph.output:
        q = producers.get(out.name)
        if out.type.tensor_type.elem_type not in dtypes or q is None:
            raise ConversionError(f"output {out.name!r} of {path} is not an 8-bit tensor")
        if q.op_type != "QuantizeLinear":
            raise ConversionError(f"output {out.name!r} of {path} is not made by QuantizeLinear")
        result[out.name] = params(q, out.name)
    return result
