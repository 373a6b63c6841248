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


@pytest.mark.slow
def test_eval_simulate_bench(digits_pkg: Path, tmp_path: Path) -> None:
    rec = tmp_path / "rec.npz"
    res = _edgekit(
        "eval",
        str(digits_pkg),
        "--dataset",
        "digits",
        "--policy",
        "bandit",
        "--record",
        str(rec),
        "--plots",
        str(tmp_path / "plots"),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["inputs"] == 359 and 0.8 < out["accuracy"] <= 1.0
    assert out["mean_cost_fraction"] < 1.0
    assert set(out["latency_ms"]) == {"mean", "p50", "p95", "p99"}
    assert sum(out["exit_histogram"]) == 359
    assert (tmp_path / "plots" / "accuracy_vs_cost.png").is_file()
    res = _edgekit(
        "simulate", str(rec), "--repeat", "5", "--plots", str(tmp_path / "plots"), "--json"
    )
    assert res.returncode == 0, res.stderr
    sim = json.loads(res.stdout)
    assert [p["policy"] for p in sim["policies"]] == [
        "bandit:ucb",
        "bandit:thompson",
        "threshold:0.9",
    ]
    assert (tmp_path / "plots" / "regret.png").is_file()
    res = _edgekit("bench", str(digits_pkg), "--dataset", "digits", "-n", "200", "--json")
    assert res.returncode == 0, res.stderr
    b = json.loads(res.stdout)
    assert len(b["stage_latency_ms"]) == 4
    assert b["raw_int8_full_ms"] > 0 and b["raw_float_full_ms"] > 0
