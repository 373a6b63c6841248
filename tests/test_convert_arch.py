"""Real Keras architectures on the defaults (issue 17), and a failed step that costs nothing.

Small inputs and one epoch: these check that the conversion goes through and what it
writes, not accuracy. The architecture matrix (benchmarks/arch_matrix.py) covers the rest.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgekit import ConversionError, read_manifest
from edgekit.converters import convert
from edgekit.converters._keras import keras  # internal: tf-keras imported as the converters do

pytestmark = pytest.mark.slow


def _image_folder(root: Path, size: tuple[int, int], classes: int, n: int = 40) -> Path:
    """PNG images whose class is a bright quadrant plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n):
            x = rng.random((h, w, 3)) * 0.3
            r, q = divmod(c, 2)
            x[r * h // 2 : (r + 1) * h // 2, q * w // 2 : (q + 1) * w // 2] += 0.6
            Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def _run_stages(pkg: Path, n_classes: int) -> None:
    """Every stage runs in LiteRT and in onnxruntime, each fed the previous stage's bytes."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    m = read_manifest(pkg)
    x = np.random.default_rng(1).integers(-128, 128, (2, *m.input.shape), dtype=np.int8)
    h_t = x
    h_o = (x.view(np.uint8) ^ np.uint8(0x80)) if m.onnx_activation_type == "uint8" else x
    for s in m.stages:
        res = Interpreter(model_path=str(pkg / s.files["tflite"])).get_signature_runner()(input=h_t)
        assert res["ek_logits"].shape == (2, n_classes)
        h_t = res.get("ek_features")
        sess = ort.InferenceSession(str(pkg / s.files["onnx"]), providers=["CPUExecutionProvider"])
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": h_o})))
        assert out["ek_logits"].shape == (2, n_classes)
        h_o = out.get("ek_features")


def test_mobilenetv2_image_folder_heads_ptq(tmp_path: Path) -> None:
    """Issue 17 case 1: untrained batch norms share constants; ONNX stages must still open."""
    k = keras()
    k.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=3).save(
        tmp_path / "mnv2.h5"
    )
    data = _image_folder(tmp_path / "images", (32, 32), 3)
    out = tmp_path / "mnv2.edgepkg"
    res = convert(
        str(data), out, model=str(tmp_path / "mnv2.h5"), quant="ptq", epochs=1, verbose=False
    )
    assert len(res.manifest.exits) == 4
    assert res.report["formats"]["missing"] == {}
    _run_stages(out, 3)
    import onnx

    for s in res.manifest.stages:
        graph = onnx.load(str(out / s.files["onnx"])).graph
        names = [i.name for i in graph.initializer]
        assert len(names) == len(set(names))
    assert res.report["agreement"]["tflite_chain_vs_unsplit"] >= 0.99


def test_mobilenetv3small_qat_falls_back_with_the_reason(tmp_path: Path) -> None:
    """Issue 17 case 2: tfmot fails inside hard-swish's TFOpLambda; PTQ takes over."""
    k = keras()
    k.applications.MobileNetV3Small(weights=None, input_shape=(40, 40, 3), classes=4).save(
        tmp_path / "mnv3.keras"
    )
    data = _image_folder(tmp_path / "images", (40, 40), 4, n=30)
    out = tmp_path / "mnv3.edgepkg"
    res = convert(str(data), out, model=str(tmp_path / "mnv3.keras"), epochs=1, verbose=False)
    assert res.manifest.quantization == "ptq"
    assert (
        res.report["qat_fallback"] and "quantization-aware training" in res.report["qat_fallback"]
    )
    assert any("fell back to PTQ" in n for n in res.report["notes"])
    assert len(res.manifest.exits) == 4
    _run_stages(out, 4)


def test_sequential_cnn_with_fused_activations_and_rescaling(tmp_path: Path) -> None:
    """Issue 17 case 3: conv outputs with their own activation are cut points; none at 0%.

    The folder also holds a few images of another size: they are resized, and said so.
    """
    from PIL import Image

    k = keras()
    layers = k.layers
    model = k.Sequential(
        [
            k.Input((32, 32, 3)),
            layers.Rescaling(1 / 255.0),
            layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Flatten(),
            layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(tmp_path / "seq.keras")
    data = _image_folder(tmp_path / "images", (32, 32), 3)
    for i in range(3):
        Image.new("RGB", (48, 40), (200, 10, 10)).save(data / "class0" / f"big{i}.png")
    out = tmp_path / "seq.edgepkg"
    res = convert(
        str(data),
        out,
        model=str(tmp_path / "seq.keras"),
        epochs=1,
        formats=("tflite",),
        verbose=False,
    )
    exits = res.manifest.exits
    assert len(exits) == 4
    assert all(e.macs_fraction > 0.05 for e in exits)
    assert exits[0].layer != "rescaling"
    resized = [n for n in res.report["notes"] if "resized 3 of 123 images to 32x32" in n]
    assert resized and "40x48" in resized[0]
    assert res.report["dataset"]["notes"] == [resized[0]]


def _digits_failure(monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """Make one later step fail the way a converter bug would (an unexpected exception)."""
    from edgekit.converters import (  # internal: patches a converter step to fail
        _convert,
        _onnx,
        _ptq,
    )

    if what == "onnx":
        real = _onnx.export_int8_onnx
        calls = Counter[str]()

        def export(model: object, path: Path, *args: object, **kwargs: object) -> object:
            calls["n"] += 1
            if Path(path).name == "stage_1.onnx":
                raise RuntimeError("AddInitializedOrtValue Attempt to replace the existing tensor")
            return real(model, path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(_onnx, "export_int8_onnx", export)
    else:
        real_tfl = _convert.to_int8_tflite

        def to_tflite(model: object, rep: object) -> bytes:
            if getattr(model, "name", "") == "stage_2":
                raise RuntimeError("tensorflow/lite/kernels: no int8 kernel")
            return real_tfl(model, rep)  # type: ignore[arg-type]

        monkeypatch.setattr(_convert, "to_int8_tflite", to_tflite)  # the unsplit model
        monkeypatch.setattr(_ptq, "to_int8_tflite", to_tflite)  # the stages


def test_onnx_failure_finishes_without_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgekit
    from edgekit import EdgekitError
    from edgekit.cli import main

    _digits_failure(monkeypatch, "onnx")
    out = tmp_path / "d.edgepkg"
    res = convert("digits", out, fast=True, epochs=1, quant="ptq", verbose=False)
    missing = res.report["formats"]["missing"]
    assert list(missing) == ["onnx"] and "stage 1" in missing["onnx"]
    assert "replace the existing tensor" in missing["onnx"]
    assert res.report["formats"]["written"] == ["tflite"]
    assert not (out / "onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d.edgepkg"]  # no work folder left
    m = read_manifest(out)  # verifies every checksum
    assert m.onnx_activation_type is None
    assert all(set(s.files) == {"tflite"} for s in m.stages)
    assert main(["verify", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["formats"]["missing"] == missing
    edgekit.load(out).predict(np.zeros(m.input.shape, np.float32))
    with pytest.raises(EdgekitError, match="onnx"):
        edgekit.load(out, backend="onnxruntime")


def test_tflite_failure_names_the_step_and_keeps_the_trained_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "d.edgepkg"
    with monkeypatch.context() as mp:
        _digits_failure(mp, "tflite")
        with pytest.raises(ConversionError) as err:
            convert("digits", out, fast=True, epochs=1, quant="ptq", verbose=False)
    msg = str(err.value)
    assert "INT8 TFLite conversion (ptq) of stage 2 failed" in msg
    assert "RuntimeError" in msg and "Traceback" not in msg
    kept = tmp_path / "d.edgepkg.work" / "trained.keras"
    assert kept.exists() and f"--model {kept}" in (err.value.hint or "")
    assert not out.exists()
    # The rerun reuses the exits and weights: no training, the checkpoint's exits.
    from edgekit.converters._exits import (  # internal: reads the exits back from a checkpoint
        split_trained,
    )

    split = split_trained(keras().models.load_model(kept, compile=False))
    assert split is not None
    res = convert(
        "digits",
        out,
        model=str(kept),
        quant="ptq",
        formats=("tflite",),
        fast=True,
        verbose=False,
    )
    assert res.report["training"] == {"mode": "none"}
    assert [e.layer for e in res.manifest.exits] == [*split[1], "final"]
    assert any("its exits and weights are reused" in n for n in res.report["notes"])
