"""PTQ stage boundaries: the next stage reads the previous stage's int8 bytes as they are.

A stage whose input feeds a Concatenate (a DenseNet dense block) got the concat's unified
scale on its input, not the previous stage's output scale (issue 17: DenseNet121's
0.00443 vs 0.00444).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit._package import QuantParams  # internal: a stage's int8 scale and zero point
from edgekit.converters._exits import submodel  # internal: stage cuts, below convert
from edgekit.converters._keras import keras  # internal: tf-keras imported as the converters do
from edgekit.converters._ptq import to_int8_tflite_stage  # internal: one stage's PTQ, below convert
from edgekit.converters._quantize import (  # internal: reads a stage's io quantization
    tflite_io_quant,
)


def _stages():
    """Two stages of a tiny model cut after a concat; stage 1 begins with concat([x, f(x)])."""
    k = keras()
    inp = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3, padding="same", activation="relu", name="c0")(inp)
    cat = k.layers.Concatenate(name="cat")([inp, x])
    # f(x) spans a much wider range than x, as a dense layer's new features can.
    y = k.layers.Conv2D(4, 1, name="c1", kernel_initializer=k.initializers.Constant(3.0))(cat)
    cat2 = k.layers.Concatenate(name="cat2")([cat, y])
    out = k.layers.Dense(3, name="out")(k.layers.GlobalAveragePooling2D(name="gap")(cat2))
    hout = k.layers.Dense(3, name="hout")(k.layers.GlobalAveragePooling2D(name="hgap")(cat))
    model = k.Model(inp, [hout, out])
    s0 = submodel(model, None, ["cat", "hout"], names=["ek_features", "ek_logits"], name="s0")
    s1 = submodel(model, "cat", ["out"], names=["ek_logits"], name="s1")
    calib = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32)
    return s0, s1, calib


def _same(a: QuantParams, b: QuantParams) -> bool:
    return bool(np.isclose(a.scale, b.scale, rtol=1e-6)) and a.zero_point == b.zero_point


@pytest.fixture(scope="module")
def converted():
    s0, s1, calib = _stages()
    fb0 = to_int8_tflite_stage(s0, calib, None)
    feats = np.asarray(s0.predict(calib, verbose=0)[0])
    return s0, s1, calib, feats, fb0


def test_next_stage_reads_the_previous_stage_quantization(converted):
    _, s1, _, feats, fb0 = converted
    q0 = tflite_io_quant(fb0)["ek_features"]
    # Calibrated on its own, stage 1's input takes the concat's wider range: the bug.
    plain = tflite_io_quant(to_int8_tflite_stage(s1, feats, None))["input"]
    assert not _same(plain, q0)
    fb1 = to_int8_tflite_stage(s1, feats, q0)
    assert _same(tflite_io_quant(fb1)["input"], q0)


def test_chained_int8_stages_agree_with_the_float_stages(converted):
    _, s1, calib, feats, fb0 = converted
    fb1 = to_int8_tflite_stage(s1, feats, tflite_io_quant(fb0)["ek_features"])
    # The bytes stage 0 writes go to stage 1 as they are.
    from ai_edge_litert.interpreter import Interpreter

    q0 = tflite_io_quant(fb0)
    qi = q0["input"]
    x = np.clip(np.round(calib / qi.scale) + qi.zero_point, -128, 127).astype(np.int8)
    mid = Interpreter(model_content=fb0).get_signature_runner()(input=x)["ek_features"]
    out = Interpreter(model_content=fb1).get_signature_runner()(input=mid)["ek_logits"]
    qo = tflite_io_quant(fb1)["ek_logits"]
    chained = (out.astype(np.float32) - qo.zero_point) * qo.scale
    want = np.asarray(s1.predict(feats, verbose=0))
    assert np.mean(np.argmax(chained, 1) == np.argmax(want, 1)) >= 0.9
    assert np.max(np.abs(chained - want)) <= 0.1 * np.max(np.abs(want))
