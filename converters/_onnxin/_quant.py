"""Static INT8 quantization of one float graph with onnxruntime (QDQ, per-channel weights),
8-bit graph input and outputs, and pinned scale/zero point on chosen tensors (the stage
boundaries), so adjacent stages share the quantization of the tensor between them."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, require
from edgekit._package import QuantParams

from .._onnx import _make_io_8bit, check_int8, check_pinned, quantize_qdq, read_io_quant
from ._fold import fold_input_normalisation
from ._pools import float_head_pools

__all__ = ["quantize_graph"]

_ELEM = {"uint8": 2, "int8": 3}


def quantize_graph(
    proto: Any,
    path: Path,
    calib: np.ndarray,
    *,
    pinned: Mapping[str, QuantParams],
    activation_type: str,
    what: str,
) -> dict[str, QuantParams]:
    """Write the INT8 QDQ version of float ``proto`` (input ``input``) to ``path``.

    ``calib``: real inputs of this graph (float32). ``pinned``: tensor name -> quantization
    it must use (any 8-bit dtype; converted to ``activation_type``). Returns the graph's
    input/output quantization as written (in ``activation_type``).
    """
    onnx = require("onnx", "convert", purpose="ONNX intake")
    wanted = {t: q.as_dtype(activation_type) for t, q in pinned.items()}

    def check_graph(graph: Any) -> None:
        names = {o for n in graph.node for o in n.output} | {"input"}
        lost = sorted(set(wanted) - names)
        if lost:
            raise ConversionError(
                f"{what}: tensors {lost} disappeared in ONNX Runtime's graph optimisation",
                hint="pick other exits (--exits with tensor names listed by the error "
                "for a wrong name)",
            )

    with tempfile.TemporaryDirectory(prefix="edgekit-onnxin-") as tmp:
        qp = Path(tmp) / "q.onnx"
        q = quantize_qdq(
            proto,
            calib,
            pinned=wanted,
            activation_type=activation_type,
            purpose="ONNX intake",
            hint="an operator of the model may not be quantizable; the message names it",
            what=f"{what}: ",
            check_graph=check_graph,
        )
        _make_io_8bit(q, _ELEM[activation_type], wanted["input"])
        fold_input_normalisation(q)  # the 8-bit input stays the pixels: one Conv less
        float_head_pools(q)
        check_int8(q, f"{what}: the INT8 model", "this is a bug in edgekit's ONNX intake")
        onnx.save(q, str(qp))
        used = read_io_quant(qp)
        check_pinned(used, wanted, f"{what}:")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(qp.read_bytes())
    return used


def pinned_in_file(path: Path, tensors: Mapping[str, QuantParams]) -> dict[str, QuantParams]:
    """The scale/zero point of internal tensors of an INT8 QDQ file (their QuantizeLinear)."""
    onnx = require("onnx", "convert", purpose="ONNX intake")
    m = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in tensors:
            zp = inits[n.input[2]]
            out[n.input[0]] = QuantParams(
                float(inits[n.input[1]].reshape(())), int(zp.reshape(())), str(zp.dtype)
            )
    return out
