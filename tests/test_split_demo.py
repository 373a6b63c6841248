"""The split demo (apps/split_demo) against a real `edgekit serve` on loopback: some inputs
go to the server, the server is killed, and every input is still answered (locally)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pkg(fmnist_fast_pkg: Path) -> Path:
    return fmnist_fast_pkg


def test_split_demo_server_killed_nothing_lost(pkg: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "demo.json", tmp_path / "inputs.jsonl"
    cmd = [sys.executable, "-m", "apps.split_demo", str(pkg), "--phases", "link,kill",
           "--phase-s", "4", "--fps", "40", "--no-shape", "--port", "0", "--print", "10",
           "--json", str(out), "--log", str(log), "--workdir", str(tmp_path / "work")]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "none lost" in r.stdout and "Traceback" not in r.stderr
    assert "server at split" in r.stdout  # printed per input
    res = json.loads(out.read_text())
    up, killed = res["phases"]
    assert res["answered"] == res["frames"] == up["inputs"] + killed["inputs"]
    assert up["offloaded"] > 0 and up["bytes_sent"] > 0 and up["inputs"] > 60
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, res["frames"] + 1))  # each input once
    after = [x for x in lines if x["seq"] >= killed["first_seq"]]
    # inputs already in flight when the server died may still have been answered by it
    assert not any(x["offloaded"] for x in after[5:])
    assert all(x["label"] is not None and 0 <= x["exit"] <= 3 for x in after)
    assert killed["fallbacks"] >= 1  # the bandit tried the dead server and answered itself
