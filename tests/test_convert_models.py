"""Conversions of user models: MobileNetV2, QAT fallback, bad model files, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit import DatasetError, ModelError, read_manifest
from edgekit.converters import convert
from edgekit.converters._keras import keras  # internal: tf-keras imported as the converters do

pytestmark = pytest.mark.slow


def _pattern_npz(path: Path, shape: tuple[int, int, int], n: int = 600, classes: int = 4) -> Path:
    """Images whose class is a bright quadrant plus noise: learnable in an epoch or two."""
    rng = np.random.default_rng(0)
    h, w, c = shape
    y = rng.integers(0, classes, n)
    x = rng.random((n, h, w, c)).astype(np.float32) * 0.3
    for i, label in enumerate(y):
        r, q = divmod(int(label), 2)
        x[i, r * h // 2 : (r + 1) * h // 2, q * w // 2 : (q + 1) * w // 2] += 0.6
    np.savez(path, x=np.clip(x, 0, 1), y=y)
    return path


def test_mobilenetv2_converts_with_three_exits_through_ptq(tmp_path: Path) -> None:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    k = keras()
    model = k.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=4)
    model.save(tmp_path / "mnv2.keras")
    data = _pattern_npz(tmp_path / "data.npz", (32, 32, 3))
    out = tmp_path / "mnv2.edgepkg"
    convert(
        str(data),
        out,
        model=str(tmp_path / "mnv2.keras"),
        quant="ptq",
        train="joint",
        epochs=2,
        verbose=False,
    )
    m = read_manifest(out)
    assert len(m.exits) == 4 and len(m.stages) == 4  # three early exits + the final one
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (2, 32, 32, 3), dtype=np.int8)
    h_t, h_o = x, (x.view(np.uint8) ^ np.uint8(0x80)) if m.onnx_activation_type == "uint8" else x
    for s in m.stages:
        run = Interpreter(model_path=str(out / s.files["tflite"])).get_signature_runner()
        res = run(input=h_t)
        assert res["ek_logits"].shape == (2, 4)
        h_t = res.get("ek_features")
        sess = ort.InferenceSession(str(out / s.files["onnx"]), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        ores = dict(zip(names, sess.run(None, {"input": h_o})))
        assert ores["ek_logits"].shape == (2, 4)
        h_o = ores.get("ek_features")
    report = json.loads((out / "report.json").read_text())
    assert report["agreement"]["tflite_chain_vs_unsplit"] >= 0.99


def test_qat_unsupported_layer_falls_back_to_ptq(tmp_path: Path) -> None:
    k = keras()
    inp = k.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = k.layers.LayerNormalization()(x)  # tfmot cannot wrap this
    x = k.layers.Conv2D(16, 3, padding="same")(x)
    x = k.layers.ReLU(name="mid_relu")(x)
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(10)(x))
    model.save(tmp_path / "ln.keras")
    out = tmp_path / "ln.edgepkg"
    res = convert(
        "digits",
        out,
        model=str(tmp_path / "ln.keras"),
        train="joint",
        exits=("mid_relu",),
        fast=True,
        epochs=2,
        formats=("tflite",),
        verbose=False,
    )
    assert res.manifest.quantization == "ptq"
    assert any("fell back to PTQ" in n for n in res.report["notes"])
    assert "LayerNormalization" in " ".join(res.report["notes"])


def test_not_a_keras_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.keras"
    bad.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a Keras model"):
        convert("digits", tmp_path / "x.edgepkg", model=str(bad), fast=True, verbose=False)
    with pytest.raises(ModelError, match="does not exist"):
        convert("digits", tmp_path / "x.edgepkg", model=str(tmp_path / "nope.keras"), verbose=False)


def test_dataset_shape_must_match_model(tmp_path: Path) -> None:
    k = keras()
    inp = k.Input((28, 28, 1))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(4, 3)(inp))
    k.Model(inp, k.layers.Dense(10)(x)).save(tmp_path / "m.keras")
    with pytest.raises(DatasetError, match=r"\(28, 28, 1\).*\(8, 8, 1\)"):
        convert("digits", tmp_path / "x.edgepkg", model=str(tmp_path / "m.keras"), verbose=False)


def test_dataset_with_too_few_classes(tmp_path: Path) -> None:
    x = np.zeros((50, 8, 8, 1), np.uint8)
    np.savez(tmp_path / "one.npz", x=x, y=np.zeros(50, np.int64))
    with pytest.raises(DatasetError, match="class"):
        convert(str(tmp_path / "one.npz"), tmp_path / "x.edgepkg", verbose=False)
