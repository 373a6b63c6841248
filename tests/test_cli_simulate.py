"""``edgekit simulate`` and its options, on a recording made here with known confidences,
labels, stage latencies and MACs (so each option's effect can be computed exactly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.evaluate import Recording

N = 300
MACS = np.array([0.2, 0.5, 1.0])  # cumulative MACs fractions of the 3 exits
STAGE_MS = np.array([1.0, 1.0, 8.0])  # latency fractions 0.1, 0.2, 1.0: not the MACs ones
LAT = np.cumsum(STAGE_MS) / STAGE_MS.sum()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recording]:
    """3 exits; early exits are less often right and less confident than the last."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 10, N)
    right = rng.random((N, 3)) < np.array([0.6, 0.8, 0.95])
    labels = np.where(right, y[:, None], (y[:, None] + 1 + rng.integers(0, 9, (N, 3))) % 10)
    confs = np.clip(rng.normal([0.55, 0.7, 0.9], 0.2, (N, 3)), 0.0, 1.0)
    rec = Recording(labels, confs, y, STAGE_MS, MACS)
    path = tmp_path_factory.mktemp("rec") / "rec.npz"
    rec.save(path)
    return path, rec


def _simulate(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert main(["simulate", *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in args else out


def _threshold_exits(rec: Recording, t: float) -> np.ndarray:
    """The first exit whose confidence reaches ``t``; the last exit otherwise."""
    reach = rec.confs[:, :-1] >= t
    return np.where(reach.any(axis=1), reach.argmax(axis=1), rec.n_exits - 1)


def test_policies_in_order_and_cost_in_macs_or_latency(
    recording: tuple[Path, Recording], capsys: pytest.CaptureFixture[str]
) -> None:
    path, rec = recording
    exits = _threshold_exits(rec, 0.6)
    hist = np.bincount(exits, minlength=3).tolist()
    acc = float((rec.labels[np.arange(N), exits] == rec.y).mean())
    assert 0 < hist[0] < N and hist[2] > 0  # the threshold really splits the stream
    for cost, fractions in (("macs", MACS), ("latency", LAT)):
        out = _simulate(
            capsys, str(path), "--policy", "threshold:0.6", "--policy", "full",
            "--cost", cost, "--json",
        )  # fmt: skip
        assert out["inputs"] == N
        thr, full = out["policies"]
        assert [thr["policy"], full["policy"]] == ["threshold:0.6", "full"]
        assert thr["exit_histogram"] == hist and thr["accuracy"] == pytest.approx(acc)
        assert thr["mean_cost_fraction"] == pytest.approx(float(fractions[exits].mean()))
        assert full["exit_histogram"] == [0, 0, N] and full["mean_cost_fraction"] == 1.0
        assert full["accuracy"] == pytest.approx(float((rec.labels[:, -1] == rec.y).mean()))
        # the oracle and the sweep are priced in the same unit
        agree = (rec.labels == rec.labels[:, -1:]).argmax(axis=1)
        assert out["oracle"]["mean_cost_fraction"] == pytest.approx(fractions[agree].mean())
        never = [r for r in out["fixed_thresholds"] if r["mean_cost_fraction"] == 1.0]
        assert never, "the sweep includes the full model (threshold never)"


def test_repeat_skip_and_seed(
    recording: tuple[Path, Recording], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = recording
    one = _simulate(capsys, str(path), "--policy", "threshold:0.6", "--json")
    three = _simulate(capsys, str(path), "--policy", "threshold:0.6", "--repeat", "3", "--json")
    assert three["inputs"] == 3 * N
    (p1,), (p3,) = one["policies"], three["policies"]
    assert p3["exit_histogram"] == [3 * h for h in p1["exit_histogram"]]  # each input 3 times
    skipped = _simulate(
        capsys, str(path), "--policy", "threshold:0.6", "--repeat", "3", "--skip", "100", "--json"
    )
    (ps,) = skipped["policies"]
    assert skipped["inputs"] == 3 * N and sum(ps["exit_histogram"]) == 3 * N - 100
    # a bandit learns from the order of the stream: the same seed replays it identically,
    # another seed shuffles it differently
    args = [str(path), "--policy", "bandit:ucb", "--repeat", "2", "--json"]
    a = _simulate(capsys, *args, "--seed", "1")["policies"][0]
    b = _simulate(capsys, *args, "--seed", "1")["policies"][0]
    c = _simulate(capsys, *args, "--seed", "2")["policies"][0]
    for s in (a, b, c):
        s.pop("seconds")
    assert a == b
    assert a != c


def test_lam_moves_a_bandit_to_cheaper_exits_and_plots_regret(
    recording: tuple[Path, Recording], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path, _ = recording
    args = [str(path), "--policy", "bandit:ucb", "--repeat", "4", "--json"]
    free = _simulate(capsys, *args, "--lam", "0")["policies"][0]
    dear = _simulate(capsys, *args, "--lam", "2", "--plots", str(tmp_path))
    costly = dear["policies"][0]
    assert costly["mean_cost_fraction"] < free["mean_cost_fraction"]
    assert costly["exit_histogram"][0] > free["exit_histogram"][0]
    assert "final_regret" in costly and "final_regret" in free
    assert dear["plots"] == [str(tmp_path / "regret.png")]
    assert (tmp_path / "regret.png").stat().st_size > 0
    # without a bandit there is no regret curve, so no plot
    out = _simulate(
        capsys, str(path), "--policy", "full", "--plots", str(tmp_path / "none"), "--json"
    )
    assert "plots" not in out and not (tmp_path / "none").exists()


def test_the_human_output_has_one_line_per_policy(
    recording: tuple[Path, Recording], capsys: pytest.CaptureFixture[str]
) -> None:
    path, rec = recording
    out = _simulate(capsys, str(path))  # the default policies
    lines = out.strip().splitlines()
    names = [ln.strip().split(": accuracy", 1)[0] for ln in lines]
    assert names == ["bandit:ucb", "bandit:thompson", "threshold:0.9"]
    thr = lines[2]
    exits = _threshold_exits(rec, 0.9)
    assert f"exits {np.bincount(exits, minlength=3).tolist()}" in thr and "regret" not in thr
    assert all("regret" in ln for ln in lines[:2])
