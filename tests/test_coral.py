"""Coral Edge TPU: the published constraints checked on real TFLite stages, the static
batch-1 copies, and the compile step with a stand-in compiler on PATH (no Edge TPU here)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from edgekit import ConversionError, read_manifest
from edgekit.converters import check_edgetpu, ensure_compiled
from edgekit.converters._edgetpu import (  # internal: the coral steps under convert --target coral
    prepare_coral,
    static_batch1,
)

flatbuffer_utils = pytest.importorskip("ai_edge_litert.tools.flatbuffer_utils")
schema = pytest.importorskip("ai_edge_litert.schema_py_generated")


def _stage(pkg: Path, k: int = 0) -> bytes:
    return (pkg / "tflite" / f"stage_{k}.tflite").read_bytes()


def _mutate(fb: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(fb))
    change(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _run(fb: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=fb).get_signature_runner()
    (name,) = runner.get_input_details()
    return dict(runner(**{name: x}))


def test_keras_stages_have_a_dynamic_batch_the_static_copy_fixes(digits_pkg: Path) -> None:
    fb = _stage(digits_pkg)
    loose = check_edgetpu(fb, "stage_0")
    assert not loose.ok and loose.mapped == 0
    assert "dynamic shape" in loose.cpu_ops[0].reason

    fixed = static_batch1(fb)
    for k in range(len(list((digits_pkg / "tflite").glob("stage_[0-9].tflite")))):
        c = check_edgetpu(static_batch1(_stage(digits_pkg, k)), f"stage_{k}")
        assert c.ok, c.summary()
        assert {o.op for o in c.ops} >= {"CONV_2D", "FULLY_CONNECTED"}
    # same model, same bytes out, only the signature is static now
    shape = json.loads((digits_pkg / "manifest.json").read_text())["input"]["shape"]
    x = np.random.default_rng(0).integers(-128, 128, (1, *shape), dtype=np.int8)
    a, b = _run(fb, x), _run(fixed, x)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_unsupported_op_sends_it_and_everything_after_to_the_cpu(digits_pkg: Path) -> None:
    fb = static_batch1(_stage(digits_pkg))
    n_ops = len(check_edgetpu(fb).ops)

    def fc_to_hard_swish(model) -> None:  # type: ignore[no-untyped-def]
        for code in model.operatorCodes:
            if code.builtinCode == schema.BuiltinOperator.FULLY_CONNECTED:
                code.builtinCode = schema.BuiltinOperator.HARD_SWISH
                code.deprecatedBuiltinCode = schema.BuiltinOperator.HARD_SWISH

    c = check_edgetpu(_mutate(fb, fc_to_hard_swish))
    first = c.cpu_ops[0]
    assert first.op == "HARD_SWISH" and "not in the Edge TPU's supported" in first.reason
    assert [o.index for o in c.cpu_ops] == list(range(first.index, n_ops))
    assert all("after op" in o.reason for o in c.cpu_ops[1:])
    assert c.mapped == first.index > 0
    assert "HARD_SWISH" in c.summary()


def test_op_version_with_features_the_edge_tpu_lacks(digits_pkg: Path) -> None:
    def conv_v5(model) -> None:  # type: ignore[no-untyped-def]
        for code in model.operatorCodes:
            if code.builtinCode == schema.BuiltinOperator.CONV_2D:
                code.version = 5  # grouped convolution

    c = check_edgetpu(_mutate(static_batch1(_stage(digits_pkg)), conv_v5))
    assert c.cpu_ops[0].op == "CONV_2D" and "version 5" in c.cpu_ops[0].reason


def test_model_level_rules_float_io_and_two_subgraphs(digits_pkg: Path) -> None:
    fb = static_batch1(_stage(digits_pkg))

    def float_input(model) -> None:  # type: ignore[no-untyped-def]
        sg = model.subgraphs[0]
        sg.tensors[sg.inputs[0]].type = schema.TensorType.FLOAT32

    c = check_edgetpu(_mutate(fb, float_input))
    assert any("FLOAT32" in p and "int8/uint8 I/O" in p for p in c.problems)
    assert c.mapped == 0 and not c.ok

    def second_subgraph(model) -> None:  # type: ignore[no-untyped-def]
        model.subgraphs.append(model.subgraphs[0])

    c = check_edgetpu(_mutate(fb, second_subgraph))
    assert any("2 subgraphs" in p for p in c.problems)

    def five_d(model) -> None:  # type: ignore[no-untyped-def]
        sg = model.subgraphs[0]
        t = sg.tensors[sg.operators[0].outputs[0]]
        t.shape = [1, 2, *list(t.shape)[1:]]
        t.shapeSignature = list(t.shape)

    c = check_edgetpu(_mutate(fb, five_d))
    assert "3 innermost" in c.cpu_ops[0].reason


def test_not_a_flatbuffer_is_a_clear_error() -> None:
    with pytest.raises(ConversionError, match="not a TFLite flatbuffer"):
        check_edgetpu(b"\x00" * 64, "junk.tflite")


def _coral_copy(pkg: Path, tmp_path: Path) -> Path:
    """The session package as ``--target coral`` leaves it (prepare_coral + manifest line)."""
    from edgekit._package import write_manifest  # internal: rewrites the manifest as convert does

    root = tmp_path / "coral.edgepkg"
    shutil.copytree(pkg, root)
    manifest = read_manifest(root)
    report, note = prepare_coral(root, len(manifest.stages))
    assert report["ok"], report["summary"]
    assert "edgetpu_compiler" in report["needs"]
    import dataclasses

    write_manifest(root, dataclasses.replace(manifest, targets={"coral": note}))
    return root


def _fake_compiler(bin_dir: Path, body: str) -> Path:
    """A stand-in for edgetpu_compiler (the real one is x86-64 Debian-only, from Coral)."""
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


# Accepts the real compiler's arguments (-s -o DIR MODEL) and writes DIR/MODEL_edgetpu.tflite.
_COPYING = """
out=""; while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done
base=$(basename "$1" .tflite); cp "$1" "$out/${base}_edgetpu.tflite"
echo "Edge TPU Compiler version 16.0 (stand-in)"
"""


def test_without_the_compiler_the_error_says_how_to_compile(
    digits_pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _coral_copy(digits_pkg, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConversionError, match="not compiled for the Edge TPU") as e:
        ensure_compiled(root)
    assert "edgetpu_compiler -s -o tflite edgetpu/stage_0.tflite" in (e.value.hint or "")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["targets"]["coral"].startswith("needs edgetpu_compiler")


def test_compiler_on_path_compiles_and_relists_the_package(
    digits_pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _coral_copy(digits_pkg, tmp_path)
    bin_dir = tmp_path / "bin"
    _fake_compiler(bin_dir, _COPYING)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    written = ensure_compiled(root)
    n = len(read_manifest(root).stages)
    assert [p.name for p in written] == [f"stage_{k}_edgetpu.tflite" for k in range(n)]
    files = read_manifest(root, verify=True).files  # checksums cover the new files
    assert all(f"tflite/stage_{k}_edgetpu.tflite" in files for k in range(n))
    assert ensure_compiled(root) == []  # nothing left to compile


def test_compiler_failure_keeps_its_output_in_the_error(
    digits_pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _coral_copy(digits_pkg, tmp_path)
    bin_dir = tmp_path / "bin"
    _fake_compiler(bin_dir, 'echo "Model not quantized" >&2; exit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ConversionError, match="Model not quantized"):
        ensure_compiled(root)
    assert not list((root / "tflite").glob("*_edgetpu.tflite"))


def test_a_package_not_converted_for_coral_is_refused(
    digits_pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "plain.edgepkg"
    shutil.copytree(digits_pkg, root)
    with pytest.raises(ConversionError, match="--target coral"):
        ensure_compiled(root, compiler="/bin/false")


def test_push_to_a_coral_profile_says_how_to_compile(digits_pkg: Path) -> None:
    """The push step that picks the edgetpu backend refuses uncompiled stages, with the how."""
    from edgekit.devices import PushError, PushOptions
    from edgekit.devices._push import _Push  # internal: one step of a push, without a device

    job = _Push(digits_pkg, read_manifest(digits_pkg), "coral-board", PushOptions())
    with pytest.raises(PushError, match=r"lacks tflite/stage_0_edgetpu\.tflite") as e:
        job._check_edgetpu_stages()
    assert "edgetpu_compiler" in (e.value.hint or "")


@pytest.mark.slow
def test_convert_target_coral_cli(tmp_path: Path, digits_trained_model: Path) -> None:
    from edgekit.cli import main

    out = tmp_path / "c.edgepkg"
    # The digits model the session trained (digits_pkg's): the coral steps come after
    # training, which no target changes; QAT, export and the checks run as from scratch.
    model = str(digits_trained_model)
    args = ["convert", "--dataset", "digits", "--model", model, "--out", str(out), "--fast"]
    assert main([*args, "--target", "coral"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "edgetpu/stage_0.tflite" in manifest["targets"]["coral"]
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["coral"]["ok"]
    assert "## Coral Edge TPU" in (out / "report.md").read_text()
