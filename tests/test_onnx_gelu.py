"""tf-keras's exact GELU (ConvNeXt's, ``activation="gelu"``) computes ``erfc``, which tf2onnx
has no handler for: the ONNX export registers ``Erfc`` as ``1 - Erf``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf_keras = pytest.importorskip("tf_keras")
ort = pytest.importorskip("onnxruntime")


def test_exact_gelu_exports_to_onnx_and_matches_keras(tmp_path: Path) -> None:
    from edgekit.converters._onnx import export_float_onnx  # the export step itself

    inp = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3, activation=None)(inp)
    x = tf_keras.layers.Activation(lambda t: tf_keras.activations.gelu(t, approximate=False))(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    out = tf_keras.layers.Dense(5, activation="gelu")(x)
    model = tf_keras.Model(inp, out)
    path = tmp_path / "gelu.onnx"
    export_float_onnx(model, path)

    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Erf" in ops and "Erfc" not in ops, ops
    x_in = np.random.default_rng(0).normal(0, 2, (16, 8, 8, 3)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x_in})[0]
    want = model.predict(x_in, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
