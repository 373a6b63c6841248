"""The edge package format: manifest round trip, checksums, schema versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit import ChecksumError, PackageError, SchemaVersionError, read_manifest
from edgekit._package import (
    SCHEMA_VERSION,
    ExitSpec,
    InputSpec,
    Manifest,
    QuantParams,
    StageSpec,
    TensorSpec,
    write_manifest,
)


def _tiny_package(root: Path) -> Manifest:
    (root / "tflite").mkdir(parents=True)
    (root / "tflite" / "stage_0.tflite").write_bytes(b"model bytes")
    q = QuantParams(0.02, -128)
    stage = StageSpec(
        0,
        {"tflite": "tflite/stage_0.tflite"},
        TensorSpec("input", (-1, 8, 8, 1), "int8", q),
        TensorSpec("ek_logits", (-1, 3), "int8", q),
        None,
        1000,
    )
    m = Manifest(
        name="tiny",
        labels=("a", "b", "c"),
        input=InputSpec((8, 8, 1)),
        stages=(stage,),
        exits=(ExitSpec(0, 0, "final", 1000, 1.0, {"float": 0.9}),),
        full={},
        quantization="ptq",
        onnx_activation_type=None,
        tools={},
    )
    return write_manifest(root, m)


def test_round_trip_and_checksums(tmp_path: Path) -> None:
    written = _tiny_package(tmp_path)
    assert set(written.files) == {"tflite/stage_0.tflite"}
    back = read_manifest(tmp_path)
    assert back == written
    assert back.formats == ("tflite",)
    assert back.stages[0].input.quant == QuantParams(0.02, -128)


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    _tiny_package(tmp_path)
    (tmp_path / "tflite" / "stage_0.tflite").write_bytes(b"model bytez")
    with pytest.raises(ChecksumError, match="sha256"):
        read_manifest(tmp_path)
    read_manifest(tmp_path, verify=False)  # explicitly skipping the check still reads it


def test_missing_file_is_refused(tmp_path: Path) -> None:
    _tiny_package(tmp_path)
    (tmp_path / "tflite" / "stage_0.tflite").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        read_manifest(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    _tiny_package(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError, match="upgrade edgekit"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text", ["{not json", '{"schema_version": 1}', "[]"])
def test_malformed_manifest(tmp_path: Path, text: str) -> None:
    _tiny_package(tmp_path)
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(PackageError):
        read_manifest(tmp_path)


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not an edge package"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(PackageError, match=r"no manifest\.json"):
        read_manifest(tmp_path)


def test_quant_params_switch_type() -> None:
    q = QuantParams(0.5, -128, "int8")
    assert q.as_dtype("uint8") == QuantParams(0.5, 0, "uint8")
    assert q.as_dtype("uint8").as_dtype("int8") == q
