"""Quantization: QAT wrapping (tfmot) with calibrated ranges, and INT8 TFLite conversion."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, QATUnsupportedError
from edgekit._package import QuantParams

from ._keras import keras, tf, tfmot

__all__ = [
    "QATUnsupportedError",
    "boundary_range",
    "qat_failure",
    "qat_model",
    "tflite_io_quant",
    "to_float_tflite",
    "to_int8_tflite",
]

# Layer types tfmot's default 8-bit scheme refuses; named when an error does not say which.
_QAT_UNSUPPORTED = frozenset(
    {"TFOpLambda", "Rescaling", "Resizing", "Normalization", "LayerNormalization", "PReLU"}
    | {"Multiply", "Lambda"}
)
_RANGE_VAR = re.compile(r"(output|post_activation|quantize_layer)_(min|max)")


def qat_model(model: Any, calib: np.ndarray) -> Any:
    """``model`` wrapped for quantization-aware training, activation ranges set from ``calib``.

    tfmot's ranges start at [-6, 6] and move by an exponential average (decay 0.999), so
    a short fine-tune would barely move them; starting from measured ranges fixes that.
    """
    mot = tfmot()
    try:
        qmodel = mot.quantization.keras.quantize_model(model)
    except Exception as exc:  # tfmot fails in many ways (AttributeError in TFOpLambda, ...)
        raise qat_failure("cannot wrap this model", exc, model) from exc
    _init_ranges(qmodel, model, calib)
    return qmodel


def qat_failure(what: str, exc: BaseException, model: Any) -> QATUnsupportedError:
    """A QATUnsupportedError saying what failed, why, and which layer types are involved."""
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    names = {type(layer).__name__ for layer in model.layers}
    bad = sorted(n for n in names if re.search(rf"\b{n}\b", text))
    bad = bad or sorted(names & _QAT_UNSUPPORTED) or ["?"]
    return QATUnsupportedError(
        f"quantization-aware training {what} ({reason})",
        hint=f"layer types involved: {', '.join(bad)}; use --quant ptq, or replace them "
        "(hard-swish, LayerNormalization, Rescaling, Resizing, PReLU, Multiply are "
        "not supported by tfmot)",
        layers=bad,
        reason=reason,
    )


def _init_ranges(qmodel: Any, model: Any, calib: np.ndarray) -> None:
    float_layers = {layer.name: layer for layer in model.layers}
    targets: list[tuple[list[Any], Any]] = []
    for ql in qmodel.layers:
        rvars = [w for w in ql.weights if _RANGE_VAR.search(w.name)]
        if not rvars:
            continue
        inner = getattr(ql, "layer", None)
        if inner is None:
            tensor = model.inputs[0]
        elif inner.name in float_layers:
            tensor = float_layers[inner.name].get_output_at(0)
        else:
            continue
        targets.append((rvars, tensor))
    if not targets:
        return
    probe = keras().Model(model.inputs, [t for _, t in targets])
    lo = np.full(len(targets), np.inf)
    hi = np.full(len(targets), -np.inf)
    for i in range(0, len(calib), 256):
        outs = probe(calib[i : i + 256], training=False)
        outs = outs if isinstance(outs, list) else [outs]
        for j, o in enumerate(outs):
            a = o.numpy()
            lo[j], hi[j] = min(lo[j], float(a.min())), max(hi[j], float(a.max()))
    for (rvars, _), a, b in zip(targets, lo, hi):
        for v in rvars:
            v.assign(min(a, 0.0) if v.name.rsplit("/", 1)[-1].endswith("min:0") else max(b, 1e-3))


def boundary_range(qmodel: Any, layer: str) -> tuple[float, float]:
    """The fake-quant range QAT learned for the output of float layer ``layer``."""
    ql = {x.name: x for x in qmodel.layers}.get(f"quant_{layer}")
    if ql is None:
        raise ConversionError(f"the QAT model has no wrapper for layer {layer!r}")
    vals = {
        w.name.rsplit("/", 1)[-1].split(":")[0]: float(w.numpy())
        for w in ql.weights
        if _RANGE_VAR.search(w.name)
    }
    for prefix in ("output", "post_activation"):
        if f"{prefix}_min" in vals:
            return vals[f"{prefix}_min"], vals[f"{prefix}_max"]
    raise ConversionError(
        f"layer {layer!r} has no quantized output in the QAT model",
        hint="choose exits after an activation, add or pooling layer",
    )


def _converter(model: Any) -> Any:
    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    return conv


def to_float_tflite(model: Any) -> bytes:
    """A float32 TFLite flatbuffer of ``model`` (for size and accuracy comparisons)."""
    try:
        return bytes(_converter(model).convert())
    except Exception as exc:
        raise ConversionError(f"TFLite float conversion of {model.name} failed: {exc}") from exc


def to_int8_tflite(model: Any, representative: np.ndarray | None) -> bytes:
    """A full-integer int8 TFLite flatbuffer (int8 input and outputs).

    QAT models carry their ranges; PTQ models are calibrated on ``representative``.
    """
    t = tf()
    conv = _converter(model)
    conv.optimizations = [t.lite.Optimize.DEFAULT]
    conv.inference_input_type = t.int8
    conv.inference_output_type = t.int8
    if representative is not None:
        data = representative.astype(np.float32)

        def gen() -> Iterator[list[np.ndarray]]:
            for i in range(len(data)):
                yield [data[i : i + 1]]

        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():
            # QAT stages carry their input range in a fake-quant op, not as "statistics".
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return bytes(conv.convert())
    except Exception as exc:
        raise ConversionError(
            f"TFLite int8 conversion of {model.name} failed: {exc}",
            hint="a layer may have no int8 kernel; try --quant ptq",
        ) from exc


def tflite_io_quant(flatbuffer: bytes) -> dict[str, QuantParams]:
    """Scale and zero point of the signature's input and outputs, by signature name."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flatbuffer)
    sig = interp.get_signature_runner()
    result: dict[str, QuantParams] = {}
    for name, d in [*sig.get_input_details().items(), *sig.get_output_details().items()]:
        scale, zp = d["quantization"]
        result[name] = QuantParams(float(scale), int(zp), np.dtype(d["dtype"]).name)
    return result
