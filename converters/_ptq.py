"""PTQ of a stage that reads the previous stage's int8 tensor: both use one quantization.

TFLite's post-training quantizer gives every tensor the range it sees in calibration, then
unifies the scales of ops that want one scale for all operands (Concatenate, pooling,
reshapes). A stage whose input feeds such an op (a DenseNet dense block starts with
``concat([x, f(x)])``) gets the op's wider range on its input, so its input scale differs
from the previous stage's output scale and the bytes between them no longer mean the same
values (issue 17). Pinning the input with one fake-quant op is not enough: the quantizer
then forces that narrower scale through the concat and clips the new features. So such a
stage reads the previous stage's grid and requantizes once to the range it calibrated
(two fake-quant ops in front: a DEQUANTIZE/QUANTIZE pair on the input in the flatbuffer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit._package import QuantParams

from ._keras import keras, tf
from ._quantize import tflite_io_quant, to_int8_tflite

__all__ = ["int8_range", "to_int8_tflite_stage"]


def int8_range(q: QuantParams) -> tuple[float, float]:
    """The real range ``[lo, hi]`` that the 8-bit grid of ``q`` covers."""
    lo, hi = (-128, 127) if q.dtype == "int8" else (0, 255)
    return q.scale * (lo - q.zero_point), q.scale * (hi - q.zero_point)


def _same(a: QuantParams, b: QuantParams) -> bool:
    return bool(np.isclose(a.scale, b.scale, rtol=1e-6)) and a.zero_point == b.zero_point


def with_input_ranges(model: Any, ranges: list[tuple[float, float]]) -> Any:
    """``model`` behind fake-quant ops of ``ranges`` (in order); same input/output names."""
    k = keras()
    fake_quant = tf().quantization.fake_quant_with_min_max_args
    inp = k.Input(tuple(model.input_shape[1:]), name="input")
    x = inp
    for i, (lo, hi) in enumerate(ranges):
        x = k.layers.Lambda(
            lambda t, lo=lo, hi=hi: fake_quant(t, lo, hi, num_bits=8), name=f"input_fq_{i}"
        )(x)
    outs = model(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    named = [
        k.layers.Lambda(lambda t: t, name=name)(o)
        for name, o in zip(model.output_names, outs, strict=True)
    ]
    return k.Model(inp, named, name=model.name)


def to_int8_tflite_stage(
    model: Any, representative: np.ndarray | None, previous: QuantParams | None
) -> bytes:
    """The int8 TFLite flatbuffer of one stage (``to_int8_tflite``, its input pinned).

    ``previous``: the quantization of the tensor the stage reads (stage k-1's
    ``ek_features``), or None for the first stage and for QAT stages (their input fake-quant
    already carries it). With PTQ the flatbuffer's input then uses exactly that scale and
    zero point; where calibration wants another range inside, the stage requantizes to it.
    """
    fb = to_int8_tflite(model, representative)
    if previous is None or representative is None:
        return fb
    own = tflite_io_quant(fb)["input"]
    if _same(own, previous):
        return fb
    ranges = [int8_range(previous), int8_range(own)]
    return to_int8_tflite(with_input_ranges(model, ranges), representative)
