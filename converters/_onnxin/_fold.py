"""Fold the input normalisation of an INT8 QDQ graph into the dequantization of its input.

The prefix that ``_build`` puts in front of an ONNX model normalises the image with a
depthwise 1x1 Conv (weight ``1/std``, bias ``-mean/std``). When every channel has the same
mean and std, one scale and zero point hold the normalised values exactly as well as the
Conv's requantized output does: with the 8-bit input ``q`` at scale ``s`` and zero point
``z`` (the pixel grid), ``(q*s - z*s - mean) / std = (q - z - mean/s) * (s/std)``. So the
input's DequantizeLinear (and the Q/DQ that ORT put around a layout Transpose on the way)
take scale ``s/std`` and zero point ``z + round(mean/s)``, and the Conv goes: the 8-bit
values the runtime feeds stay the pixels, one QLinearConv over the image less per input.
The file's ``metadata_props`` keep the pixel grid (:data:`INPUT_GRID_KEY`), which is what
the manifest and ``read_io_quant`` give as the stage's input quantization.
The rounding moves the mean by at most half a pixel step (``s/2``); the Conv's output
grid rounded every pixel by up to half its own step, of the same size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit._errors import require

from .._onnx import _INPUT_GRID_KEY as INPUT_GRID_KEY
from .._onnx import _consumers, _prune_unused

__all__ = ["INPUT_GRID_KEY", "fold_input_normalisation"]

CONV = "ek_pre_normalise"
_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def fold_input_normalisation(proto: Any, input_name: str = "input") -> bool:
    """Fold the prefix's normalisation Conv of the QDQ ``proto`` into its input's
    dequantization, in place. Returns whether it did (False: no such Conv, channels with
    different mean or std, a graph of another shape, or a zero point out of range)."""
    onnx = require("onnx", "convert", purpose="ONNX intake")
    nh = onnx.numpy_helper
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    conv = next((n for n in graph.node if n.name == CONV and n.op_type == "Conv"), None)
    if conv is None or len(conv.input) < 3:
        return False
    weight, bias = (_value(nh, inits, producer, name) for name in conv.input[1:3])
    if weight is None or bias is None:
        return False
    std = 1.0 / weight.reshape(-1).astype(np.float64)
    mean = -bias.reshape(-1).astype(np.float64) * std
    if np.ptp(std) > 1e-6 * abs(std[0]) or np.ptp(mean) > 1e-6:
        return False
    path = _path_to_input(conv.input[0], producer, input_name)
    users = _consumers(graph)
    if path is None or any(len(users.get(o, [])) != 1 for n in path for o in n.output):
        return False  # a tensor on the way that something else reads too keeps its grid
    params = {(n.input[1], n.input[2]) for n in path if n.op_type in _QDQ}
    values = {_qparams(nh, inits, s, z) for s, z in params}
    if len(values) != 1 or None in values:
        return False
    scale, zero, dtype = next(iter(values))  # type: ignore[misc]
    new_zero = zero + round(float(mean[0]) / scale)
    lo, hi = _RANGE.get(np.dtype(dtype), (0, -1))
    if not lo <= new_zero <= hi:
        return False
    s_name, z_name = "ek_pre_folded_scale", "ek_pre_folded_zero_point"
    graph.initializer.extend(
        [
            nh.from_array(np.asarray(scale / float(std[0]), np.float32), s_name),
            nh.from_array(np.asarray(new_zero, dtype), z_name),
        ]
    )
    for n in path:
        if n.op_type in _QDQ:
            n.input[1], n.input[2] = s_name, z_name
    _bypass(graph, conv, conv.input[0])
    _prune_unused(graph)  # the Conv's weight DQs and their initializers
    entry = proto.metadata_props.add()
    entry.key, entry.value = INPUT_GRID_KEY, f"{scale!r} {zero}"
    return True


_QDQ = ("QuantizeLinear", "DequantizeLinear")
_PASS = ("Transpose", "Reshape", "Identity")


def _value(nh: Any, inits: dict[str, Any], producer: dict[str, Any], name: str) -> Any:
    """A constant input: an initializer, or a DequantizeLinear of initializers."""
    if name in inits:
        return nh.to_array(inits[name])
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input):
        return None
    q, s, z = (nh.to_array(inits[i]).astype(np.float64) for i in dq.input[:3])
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if s.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return (q - z) * s


def _path_to_input(name: str, producer: dict[str, Any], input_name: str) -> list[Any] | None:
    """The nodes from the graph input to ``name``: only Q/DQ and layout ops, or None."""
    path: list[Any] = []
    while name != input_name:
        n = producer.get(name)
        if n is None or n.op_type not in (*_QDQ, *_PASS):
            return None
        path.append(n)
        name = n.input[0]
    return path


def _qparams(nh: Any, inits: dict[str, Any], s: str, z: str) -> tuple[float, int, Any] | None:
    if s not in inits or z not in inits:
        return None
    sv, zv = nh.to_array(inits[s]), nh.to_array(inits[z])
    if sv.size != 1 or zv.size != 1:
        return None
    return float(sv.reshape(())), int(zv.reshape(())), zv.dtype


def _bypass(graph: Any, conv: Any, source: str) -> None:
    """Remove ``conv`` and the Q/DQ pair after it; their readers read ``source``."""
    users = _consumers(graph)
    out = conv.output[0]
    gone = [conv]
    ends = [out]
    q = users.get(out, [])
    if len(q) == 1 and q[0].op_type == "QuantizeLinear":
        gone.append(q[0])
        dqs = users.get(q[0].output[0], [])
        if dqs and all(d.op_type == "DequantizeLinear" for d in dqs):
            gone.extend(dqs)
            ends = [d.output[0] for d in dqs]
        else:
            gone.pop()
    _rewire(graph, {e: source for e in ends})
    for n in gone:
        graph.node.remove(n)


def _rewire(graph: Any, mapping: dict[str, str]) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = mapping.get(name, name)
    for o in graph.output:
        if o.name in mapping:
            raise AssertionError(f"the normalisation Conv feeds the graph output {o.name}")
