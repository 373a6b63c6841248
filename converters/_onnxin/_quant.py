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

from .._onnx import (
    _calibration_reader,
    _make_io_8bit,
    _must_keep_activations,
    _overrides,
    read_io_quant,
)

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
    oq = require("onnxruntime.quantization", "convert", purpose="ONNX intake")
    shape_inf = require(
        "onnxruntime.quantization.shape_inference", "convert", purpose="ONNX intake"
    )
    wanted = {t: q.as_dtype(activation_type) for t, q in pinned.items()}
    with tempfile.TemporaryDirectory(prefix="edgekit-onnxin-") as tmp:
        fp, pp, qp = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save(proto, str(fp))
        try:
            shape_inf.quant_pre_process(str(fp), str(pp), skip_symbolic_shape=True)
            pre = onnx.load(str(pp))
            names = {o for n in pre.graph.node for o in n.output} | {"input"}
            lost = sorted(set(wanted) - names)
            if lost:
                raise ConversionError(
                    f"{what}: tensors {lost} disappeared in ONNX Runtime's graph optimisation",
                    hint="pick other exits (--exits with tensor names listed by the error "
                    "for a wrong name)",
                )
            qt = oq.QuantType
            oq.quantize_static(
                str(pp),
                str(qp),
                _calibration_reader(oq.CalibrationDataReader, np.asarray(calib, np.float32)),
                quant_format=oq.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=qt.QUInt8 if activation_type == "uint8" else qt.QInt8,
                weight_type=qt.QInt8,
                extra_options={
                    "TensorQuantOverrides": _overrides(pre.graph, wanted, activation_type),
                    "ForceQuantizeNoInputCheck": True,
                    "QDQKeepRemovableActivations": _must_keep_activations(pre.graph, wanted),
                },
            )
            q = onnx.load(str(qp))
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(
                f"{what}: ONNX Runtime static quantization failed: {exc}",
                hint="an operator of the model may not be quantizable; the message names it",
            ) from exc
        _make_io_8bit(q, _ELEM[activation_type], wanted["input"])
        try:
            onnx.checker.check_model(q, full_check=True)
        except Exception as exc:
            raise ConversionError(
                f"{what}: the INT8 model is invalid after making its input/outputs 8-bit: {exc}",
                hint="report this with the model",
            ) from exc
        onnx.save(q, str(qp))
        used = read_io_quant(qp)
        for name, want in wanted.items():
            if name in used and used[name] != QuantParams(
                float(np.float32(want.scale)), want.zero_point, want.dtype
            ):
                raise ConversionError(
                    f"{what}: tensor {name!r} was quantized with {used[name]}, not {want}",
                    hint="ONNX Runtime ignored the pinned quantization; report it with the model",
                )
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
