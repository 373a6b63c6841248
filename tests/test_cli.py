"""The edgekit command line, run as a user would (a subprocess of the installed script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _edgekit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=600
    )


def test_help_lists_commands() -> None:
    res = _edgekit("--help")
    assert res.returncode == 0
    for cmd in ("convert", "report", "verify"):
        assert cmd in res.stdout


@pytest.mark.slow
def test_report_and_verify(digits_pkg: Path) -> None:
    res = _edgekit("report", str(digits_pkg))
    assert res.returncode == 0, res.stderr
    assert "| exit |" in res.stdout and "TFLite INT8" in res.stdout
    res = _edgekit("report", str(digits_pkg), "--json")
    assert json.loads(res.stdout)["exits"][0]["index"] == 0
    res = _edgekit("verify", str(digits_pkg))
    assert res.returncode == 0 and "ok" in res.stdout


@pytest.mark.slow
def test_errors_are_one_clear_message(digits_pkg: Path, tmp_path: Path) -> None:
    res = _edgekit("convert", "--dataset", "digits", "--out", str(digits_pkg), "--fast")
    assert res.returncode == 2
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert "Traceback" not in res.stderr

    copy = tmp_path / "c.edgepkg"
    shutil.copytree(digits_pkg, copy)
    (copy / "onnx" / "stage_0.onnx").write_bytes(b"garbage")
    res = _edgekit("verify", str(copy))
    assert res.returncode == 2
    assert "sha256" in res.stderr and "Traceback" not in res.stderr


def test_missing_dataset_hint(tmp_path: Path) -> None:
    res = _edgekit(
        "convert", "--dataset", f"fashion-mnist:{tmp_path}", "--out", str(tmp_path / "x.edgepkg")
    )
    assert res.returncode == 2
    assert "dataset-fashion-mnist" in res.stderr
    assert not (tmp_path / "x.edgepkg").exists()
