"""``edgekit eval`` with the options a user types: ``--lam``, ``--budget-ms``, ``--state``
and ``--offload`` (with its token), on the shared ``--fast`` digits package."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.cli import main

pytestmark = pytest.mark.slow

LIMIT = "120"
TOKEN = "eval-offload-token"


def _eval(capsys: pytest.CaptureFixture[str], pkg: Path, *args: str) -> Any:
    capsys.readouterr()
    rc = main(["eval", str(pkg), "--dataset", "digits", "--limit", LIMIT, *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out) if "--json" in args else captured.out


def _arm_count(res: dict[str, Any]) -> float:
    return sum(a["count"] for a in res["arms"]["arms"])


def test_lam_and_budget_ms_change_what_the_bandit_chooses(
    digits_pkg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    free = _eval(capsys, digits_pkg, "--policy", "bandit", "--lam", "0", "--json")
    dear = _eval(capsys, digits_pkg, "--policy", "bandit", "--lam", "3", "--json")
    assert free["arms"]["lambda"] == 0.0 and dear["arms"]["lambda"] == 3.0
    # a cost weight of 3 makes every deeper exit a loss: the bandit stops earlier
    assert dear["mean_macs_fraction"] < free["mean_macs_fraction"]
    assert dear["exit_histogram"][0] > free["exit_histogram"][0]
    # a latency budget no input can meet raises lambda from 0 and pulls the exits earlier
    tight = _eval(
        capsys, digits_pkg, "--policy", "bandit", "--lam", "0", "--budget-ms", "0.0001", "--json"
    )
    assert tight["arms"]["lambda"] > 1.0
    assert tight["mean_macs_fraction"] < free["mean_macs_fraction"]
    assert tight["exit_histogram"][0] > free["exit_histogram"][0]
    # a budget every input meets lowers lambda (to 0 from the default 0.15)
    loose = _eval(capsys, digits_pkg, "--policy", "bandit", "--budget-ms", "1e6", "--json")
    assert loose["arms"]["lambda"] < 0.15


def test_state_is_written_then_reused(
    digits_pkg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "bandit.json"
    first = _eval(capsys, digits_pkg, "--policy", "bandit", "--state", str(state), "--json")
    assert state.is_file() and state.stat().st_size > 0
    saved = state.read_text()
    assert first["inputs"] == int(LIMIT) and _arm_count(first) >= int(LIMIT)
    again = _eval(capsys, digits_pkg, "--policy", "bandit", "--state", str(state), "--json")
    # the second run starts from what the first learned: its arm counts carry on, where a
    # run from fresh state counts about what the first did (counts depend a little on the
    # measured latencies, so not exactly)
    fresh = _eval(capsys, digits_pkg, "--policy", "bandit", "--json")
    assert _arm_count(fresh) < 1.2 * _arm_count(first)
    assert _arm_count(again) > 1.8 * _arm_count(first)
    assert state.read_text() != saved


@pytest.fixture(scope="module")
def server_url(digits_pkg: Path) -> Iterator[str]:
    pytest.importorskip("uvicorn")
    from edgekit.serve import ServeConfig, Server

    with Server(digits_pkg, ServeConfig(port=0, token=TOKEN, max_delay_ms=0)) as srv:
        yield srv.url


def test_offload_sends_inputs_to_the_server_with_the_token(
    digits_pkg: Path,
    server_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEKIT_OFFLOAD_TOKEN", raising=False)
    args = ("--offload", server_url, "--policy", "split:1", "--json")
    local = _eval(capsys, digits_pkg, "--policy", "full", "--json")
    sent = _eval(capsys, digits_pkg, *args, "--offload-token", TOKEN)
    off = sent["offload"]
    n = int(LIMIT)
    assert off["offloaded"] == n and off["by_split"][1] == n and off["fallbacks"] == 0
    assert off["bytes_sent"] > 0
    # stages 1.. ran on the server: the same INT8 model, so (nearly) the same answers
    assert abs(sent["accuracy"] - local["accuracy"]) <= 0.02
    # without the token the server refuses and the device answers every input itself
    refused = _eval(capsys, digits_pkg, *args)
    assert refused["offload"]["offloaded"] == 0 and refused["offload"]["fallbacks"] > 0
    assert abs(refused["accuracy"] - local["accuracy"]) <= 0.02
    # the token from the environment, and the human output's offload line
    monkeypatch.setenv("EDGEKIT_OFFLOAD_TOKEN", TOKEN)
    out = _eval(capsys, digits_pkg, "--offload", server_url, "--policy", "split:1")
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith("offload:")]
    assert json.loads(line.split("offload:", 1)[1])["offloaded"] == n
