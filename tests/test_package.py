"""The edge package format: manifest round trip, checksums, schema versions."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgekit import ChecksumError, PackageError, SchemaVersionError, read_manifest
from edgekit._package import (  # internal: the manifest's records and writer
    SCHEMA_VERSION,
    ExitSpec,
    InputSpec,
    Manifest,
    QuantParams,
    StageSpec,
    TensorSpec,
    check_name,
    check_package_path,
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


# -- the package rule: names and paths ----------------------------------------------------


def _edit(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((root / "manifest.json").read_text())
    change(data)
    (root / "manifest.json").write_text(json.dumps(data))


def _stage_path(data: dict[str, Any], rel: str) -> None:
    data["stages"][0]["files"]["tflite"] = rel


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "../other.edgepkg/tflite/stage_0.tflite", "tflite/../../x", "a//b", ""]
)
def test_stage_path_outside_the_package_is_refused(tmp_path: Path, rel: str) -> None:
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    _edit(pkg, lambda d: _stage_path(d, rel))
    with pytest.raises(PackageError, match=r"stages\[0\]\.files"):
        read_manifest(pkg, verify=False)


def test_full_model_path_outside_the_package_is_refused(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    _edit(pkg, lambda d: d["full"].update(tflite="/etc/passwd"))
    with pytest.raises(PackageError, match=r"full\['tflite'\]"):
        read_manifest(pkg)


def test_stage_path_must_be_listed_with_its_sha256(tmp_path: Path) -> None:
    # Another file that exists in the package, but was never checksummed.
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    (pkg / "tflite" / "other.tflite").write_bytes(b"unverified")
    _edit(pkg, lambda d: _stage_path(d, "tflite/other.tflite"))
    with pytest.raises(PackageError, match="not listed with its sha256"):
        read_manifest(pkg)
    _edit(pkg, lambda d: d["full"].update(onnx="onnx/full.onnx"))
    with pytest.raises(PackageError, match="not listed"):
        read_manifest(pkg)


@pytest.mark.parametrize(
    "key", ["../escaped.txt", "l/../../../escaped/pwned.txt", "/abs", "manifest.json", ".hidden"]
)
def test_bad_file_key_is_refused(tmp_path: Path, key: str) -> None:
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    _edit(pkg, lambda d: d["files"].update({key: "0" * 64}))
    with pytest.raises(PackageError, match="files key"):
        read_manifest(pkg, verify=False)


def test_symlink_inside_the_package_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"model bytes")  # same bytes: the checksum alone would pass
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    stage = pkg / "tflite" / "stage_0.tflite"
    stage.unlink()
    stage.symlink_to(outside)
    with pytest.raises(PackageError, match="symlink"):
        read_manifest(pkg)
    with pytest.raises(PackageError, match="symlink"):
        read_manifest(pkg, verify=False)
    # A linked folder on the way is refused too.
    stage.unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "stage_0.tflite").write_bytes(b"model bytes")
    (pkg / "tflite").rmdir()
    (pkg / "tflite").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PackageError, match="symlink"):
        read_manifest(pkg)


def test_write_manifest_refuses_symlinks(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    (pkg / "report.json").symlink_to("/etc/hostname")
    with pytest.raises(PackageError, match="symlink"):
        write_manifest(pkg, read_manifest(pkg, verify=False))


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "x" * 65, "naïve", "-x"])
def test_bad_package_name_is_refused(tmp_path: Path, name: str) -> None:
    pkg = tmp_path / "p"
    _tiny_package(pkg)
    _edit(pkg, lambda d: d.update(name=name))
    with pytest.raises(PackageError, match="package name"):
        read_manifest(pkg)
    with pytest.raises(PackageError, match="package name"):
        check_name(name)


def test_good_names_and_paths_pass() -> None:
    for name in ("digits", "fmnist-v2.1", "A_b.c-9", "x" * 64):
        assert check_name(name) == name
    for rel in ("report.json", "tflite/stage_0.tflite", "onnx/stage_0.onnx.data", "plots/a.png"):
        assert check_package_path(rel) == rel


def test_manifest_is_written_with_the_normal_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _tiny_package(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".manifest.*"))


def test_manifest_sha256_is_the_read_bytes(tmp_path: Path) -> None:
    import hashlib

    written = _tiny_package(tmp_path)
    raw = (tmp_path / "manifest.json").read_bytes()
    assert written.sha256 == hashlib.sha256(raw).hexdigest()
    assert read_manifest(tmp_path).sha256 == written.sha256
    assert "sha256" not in json.loads(raw)  # the digest of the file is not inside it
    (tmp_path / "manifest.json").write_bytes(raw.replace(b'"tiny"', b'"tinz"'))
    assert (
        read_manifest(tmp_path).sha256
        == hashlib.sha256((tmp_path / "manifest.json").read_bytes()).hexdigest()
    )


def test_protocol_package_sha256_is_the_manifest_digest(tmp_path: Path) -> None:
    from edgekit._kserve import package_sha256  # the KServe codec's helper for clients

    written = _tiny_package(tmp_path / "pkg")
    assert package_sha256(tmp_path / "pkg") == written.sha256
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text('{"a": 1}')
    with pytest.raises(PackageError):
        package_sha256(tmp_path / "junk")


def test_split_points_follow_the_stages_and_old_packages_still_read(tmp_path: Path) -> None:
    _tiny_package(tmp_path)
    assert read_manifest(tmp_path).split_points == ()  # one stage: nowhere to cut
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert "split_points" not in data
    data["split_points"] = [1]  # what older converts wrote
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).split_points == ()


def test_converted_split_points_are_the_runtime_splits(digits_pkg: Path) -> None:
    m = read_manifest(digits_pkg)
    assert len(m.stages) >= 2
    assert m.split_points == tuple(range(1, len(m.stages)))
