"""``edgekit convert`` succeeding with the options a user types: ``--exits``, ``--formats``,
``--target``, ``--train heads|none``, ``--json`` and the table it prints otherwise.

Two conversions (each module-scoped, through ``python -m edgekit``), both cheap: digits
``--fast``, PTQ, and one or two training epochs at most."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import edgekit

pytestmark = pytest.mark.slow


def _edgekit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One exit at half the MACs, TFLite only, heads trained on a frozen backbone, --json."""
    out = tmp_path_factory.mktemp("cli-convert") / "heads.edgepkg"
    res = _edgekit(
        "convert", "--dataset", "digits", "--out", str(out), "--fast", "--quiet",
        "--exits", "0.5", "--formats", "tflite", "--train", "heads", "--quant", "ptq",
        "--epochs", "2", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default exits and formats, no training at all, ONNX for ARM, the human table."""
    out = tmp_path_factory.mktemp("cli-convert") / "none.edgepkg"
    res = _edgekit(
        "convert", "--dataset", "digits", "--out", str(out), "--fast", "--quiet",
        "--train", "none", "--quant", "ptq", "--target", "arm",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def _report(pkg: Path) -> dict[str, Any]:
    return json.loads((pkg / "report.json").read_text())


def test_json_prints_the_report(heads: tuple[Path, str]) -> None:
    pkg, stdout = heads
    printed = json.loads(stdout)  # stdout is the JSON report and nothing else
    assert printed == _report(pkg)
    assert printed["name"] == "heads" and printed["dataset"]["name"] == "digits"
    assert printed["quantization"] == "ptq"
    assert [e["index"] for e in printed["exits"]] == [0, 1]
    assert "| exit |" not in stdout


def test_exits_gives_one_early_exit_near_the_fraction(heads: tuple[Path, str]) -> None:
    pkg, _ = heads
    m = edgekit.read_manifest(pkg)
    assert len(m.exits) == 2 and len(m.stages) == 2  # --exits 0.5: one early exit + final
    assert abs(m.exits[0].macs_fraction - 0.5) < 0.2 and m.exits[1].macs_fraction == 1.0


def test_formats_tflite_writes_no_onnx(heads: tuple[Path, str]) -> None:
    pkg, stdout = heads
    m = edgekit.read_manifest(pkg)
    assert m.formats == ("tflite",)
    assert not list(pkg.rglob("*.onnx")) and not (pkg / "onnx").exists()
    assert json.loads(stdout)["formats"]["written"] == ["tflite"]
    assert all(set(s.files) == {"tflite"} for s in m.stages)
    with pytest.raises(edgekit.PackageError, match="does not have"):
        edgekit.load(pkg, backend="onnxruntime")
    with edgekit.load(pkg, backend="litert", policy="full") as model:
        assert model.n_exits == 2


def test_train_heads_trains_the_exits_on_a_frozen_backbone(
    heads: tuple[Path, str], untrained: tuple[Path, str]
) -> None:
    h, u = _report(heads[0]), _report(untrained[0])
    training = h["training"]
    assert training["mode"] == "heads" and training["epochs_run"] == 2
    # the backbone (and the final classifier, part of it) does not move during training...
    finals = [ep["val_acc_exit1"] for ep in training["history"]]
    assert len(set(finals)) == 1, finals
    # ... so the final exit is exactly the untrained one (same seed, same initial weights)
    assert h["exits"][-1]["accuracy"]["float"] == u["exits"][-1]["accuracy"]["float"]
    # while the early head learned: far above both chance and the frozen final exit
    early = h["exits"][0]["accuracy"]["float"]
    assert early > 0.25 and early > h["exits"][-1]["accuracy"]["float"] + 0.1


def test_train_none_leaves_every_exit_untrained(untrained: tuple[Path, str]) -> None:
    r = _report(untrained[0])
    assert r["training"] == {"mode": "none"}
    assert "no training: exits are untrained" in r["notes"]
    assert r["qat"] == {} and r["quantization"] == "ptq"
    for e in r["exits"]:
        assert e["accuracy"]["float"] < 0.3, e  # 10 classes: chance is 0.1


def test_target_arm_writes_int8_onnx(untrained: tuple[Path, str]) -> None:
    ort = pytest.importorskip("onnxruntime")
    pkg, _ = untrained
    r = _report(pkg)
    assert r["onnx_activation_type"] == "int8"
    assert r["formats"]["written"] == ["tflite", "onnx"]
    m = edgekit.read_manifest(pkg)
    for s in m.stages:
        sess = ort.InferenceSession(str(pkg / s.files["onnx"]), providers=["CPUExecutionProvider"])
        assert [i.type for i in sess.get_inputs()] == ["tensor(int8)"], s.files["onnx"]


def test_target_auto_on_x86_writes_uint8_onnx(digits_pkg: Path) -> None:
    """The contrast for --target arm: the default package, converted on this machine."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"auto picks int8 on {platform.machine()}: no contrast to check")
    assert _report(digits_pkg)["onnx_activation_type"] == "uint8"


def test_the_table_has_one_row_per_exit(untrained: tuple[Path, str]) -> None:
    pkg, stdout = untrained
    r = _report(pkg)
    lines = stdout.splitlines()
    head = "| exit | layer | MACs | MACs fraction | float | TFLite INT8 | ONNX INT8 |"
    assert head in lines
    rows = [ln for ln in lines if ln[:3] in {f"| {e['index']}" for e in r["exits"]}]
    assert len(rows) == len(r["exits"]) == len(edgekit.read_manifest(pkg).exits) == 4
    for row, e in zip(rows, r["exits"]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == str(e["index"]) and cells[1] == e["layer"]
        assert cells[3] == f"{e['macs_fraction']:.3f}"
        assert cells[4] == f"{100 * e['accuracy']['float']:.2f}%"
        assert cells[5] == f"{100 * e['accuracy']['tflite_int8']:.2f}%"
    assert rows[-1].split("|")[2].strip() == "final"
    assert "- note: no training: exits are untrained" in lines
    assert lines[-1] == f"wrote {pkg} (report: {pkg / 'report.md'})"
