"""End-to-end conversion on real data with the real converters and interpreters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit import ChecksumError, ConversionError, ModelError, OutputExistsError, read_manifest
from edgekit.data import load_digits

pytestmark = pytest.mark.slow


def _litert(path: Path) -> object:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_runner()


def _ort(path: Path) -> object:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_package_layout_and_manifest(digits_pkg: Path) -> None:
    m = read_manifest(digits_pkg)  # verifies every sha256
    assert m.quantization == "qat"
    assert m.formats == ("tflite", "onnx")
    assert len(m.stages) == 4 and len(m.exits) == 4
    for s in m.stages:
        for rel in s.files.values():
            assert (digits_pkg / rel).is_file()
            assert rel in m.files
    assert [e.macs_fraction for e in m.exits] == sorted(e.macs_fraction for e in m.exits)
    assert m.exits[-1].macs_fraction == pytest.approx(1.0)
    assert m.exits[0].macs_fraction < 0.3
    for f in (
        "report.json",
        "report.md",
        "plots/accuracy_cost.png",
        "plots/sizes.png",
        "tflite/full.tflite",
        "onnx/full.onnx",
    ):
        assert (digits_pkg / f).is_file(), f
    assert not list(digits_pkg.parent.glob(".*partial*"))


def test_report_contract(digits_pkg: Path) -> None:
    report = json.loads((digits_pkg / "report.json").read_text())
    exits = report["exits"]
    assert [e["index"] for e in exits] == list(range(len(exits)))
    for e in exits:
        assert 0 < e["macs_fraction"] <= 1
        # digits is easy: every exit of a working conversion, in every format, is far
        # above chance (10%); a broken exit head or quantization lands near chance
        for k in ("float", "tflite_int8", "onnx_int8"):
            assert 0.6 < e["accuracy"][k] <= 1.0, (e["index"], k, e["accuracy"])
    for fmt in ("tflite", "onnx"):
        s = report["sizes"][fmt]
        assert s["int8"] < 0.35 * s["float"], s
    assert exits[-1]["accuracy"]["tflite_int8"] > 0.85
    assert report["agreement"]["tflite_chain_vs_unsplit"] >= 0.995
    assert report["agreement"]["onnx_chain_vs_unsplit"] >= 0.99
    assert report["agreement"]["tflite_vs_onnx"] >= 0.97


def test_adjacent_stages_share_quantization(digits_pkg: Path) -> None:
    m = read_manifest(digits_pkg)
    for a, b in zip(m.stages, m.stages[1:]):
        assert a.features is not None
        assert a.features.quant == b.input.quant
        assert a.features.shape == b.input.shape


def test_chained_stages_reproduce_unsplit_model_in_litert(digits_pkg: Path) -> None:
    m = read_manifest(digits_pkg)
    x = load_digits().x_test[:64]
    q = m.stages[0].input.quant
    assert q is not None
    h = np.clip(np.round(x / q.scale) + q.zero_point, -128, 127).astype(np.int8)
    full = _litert(digits_pkg / m.full["tflite"])(input=h)  # type: ignore[operator]
    for k, s in enumerate(m.stages):
        out = _litert(digits_pkg / s.files["tflite"])(input=h)  # type: ignore[operator]
        assert out["ek_logits"].dtype == np.int8
        np.testing.assert_array_equal(out["ek_logits"], full[f"exit_{k}"])
        h = out.get("ek_features")


def test_onnx_stages_take_and_give_8bit_tensors(digits_pkg: Path) -> None:
    m = read_manifest(digits_pkg)
    assert m.onnx_activation_type in ("uint8", "int8")
    x = load_digits().x_test[:32]
    q = m.stages[0].input.quant
    assert q is not None
    qa = q.as_dtype(m.onnx_activation_type or "int8")
    lo, hi = (0, 255) if qa.dtype == "uint8" else (-128, 127)
    h = np.clip(np.round(x / qa.scale) + qa.zero_point, lo, hi).astype(qa.dtype)
    for s in m.stages:
        sess = _ort(digits_pkg / s.files["onnx"])
        names = [o.name for o in sess.get_outputs()]  # type: ignore[attr-defined]
        res = dict(zip(names, sess.run(None, {"input": h})))  # type: ignore[attr-defined]
        assert res["ek_logits"].dtype == np.dtype(qa.dtype)
        h = res.get("ek_features")


def test_corrupt_stage_is_detected(digits_pkg: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.edgepkg"
    shutil.copytree(digits_pkg, copy)
    f = copy / "tflite" / "stage_1.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"stage_1\.tflite"):
        read_manifest(copy)


def test_ptq_with_named_exits(digits_ptq_pkg: Path) -> None:
    m = read_manifest(digits_ptq_pkg)
    assert m.quantization == "ptq"
    assert [e.layer for e in m.exits] == ["block2_relu", "block5_relu", "final"]
    report = json.loads((digits_ptq_pkg / "report.json").read_text())
    assert report["agreement"]["tflite_chain_vs_unsplit"] >= 0.995
    assert report["exits"][-1]["accuracy"]["tflite_int8"] > 0.85


def test_existing_output_is_refused(digits_pkg: Path, tmp_path: Path) -> None:
    from edgekit.converters import convert

    # A copy, so that a regression overwrites this test's folder, not the session package.
    out = tmp_path / "existing.edgepkg"
    shutil.copytree(digits_pkg, out)
    before = read_manifest(out)
    with pytest.raises(OutputExistsError, match="--force"):
        convert("digits", out, fast=True, verbose=False)
    assert read_manifest(out) == before


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.converters import _convert, convert  # internal: patches a step of the convert

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_convert, "write_report", boom)
    out = tmp_path / "x.edgepkg"
    with pytest.raises(KeyboardInterrupt):
        convert("digits", out, fast=True, epochs=1, formats=("tflite",), quant="ptq", verbose=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_force_run_keeps_previous_package(
    digits_pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from edgekit.converters import _convert, convert  # internal: patches a step of the convert

    copy = tmp_path / "keep.edgepkg"
    shutil.copytree(digits_pkg, copy)
    before = read_manifest(copy)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_convert, "write_report", boom)
    with pytest.raises(ConversionError, match=r"writing the report failed \(RuntimeError: disk"):
        convert(
            "digits",
            copy,
            fast=True,
            epochs=1,
            formats=("tflite",),
            quant="ptq",
            force=True,
            verbose=False,
        )
    assert read_manifest(copy) == before
    # Only the trained model is kept, next to the package, for a rerun without training.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.edgepkg", "keep.edgepkg.work"]
    assert [p.name for p in (tmp_path / "keep.edgepkg.work").iterdir()] == ["trained.keras"]


def test_missing_exit_layer(tmp_path: Path) -> None:
    from edgekit.converters import convert

    with pytest.raises(ModelError, match="does not exist") as err:
        convert("digits", tmp_path / "x.edgepkg", fast=True, exits=("block2_rleu",), verbose=False)
    assert not (tmp_path / "x.edgepkg").exists()
    assert err.value.context["layer"] == "block2_rleu"


def test_exit_inside_a_fused_block_is_refused(tmp_path: Path) -> None:
    from edgekit.converters import convert

    with pytest.raises(ModelError, match="not a place where the model can be cut"):
        convert("digits", tmp_path / "x.edgepkg", fast=True, exits=("block2_conv",), verbose=False)
