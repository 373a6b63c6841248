"""Exits placed by measured latency (``place_exits="latency"``): what is timed, and its use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgekit import ConversionError
from edgekit.converters import ConvertOptions, convert
from edgekit.converters._graph import (  # internal: where exits go, below convert
    cut_points,
    pick_cuts,
)
from edgekit.converters._models import builtin_cnn  # internal: the built-in CNN
from edgekit.converters._placement import (  # internal: the latency measurement
    latency_costs,
    measure_cuts,
)

SHAPE = (8, 8, 1)  # scikit-learn digits


@pytest.fixture(scope="module")
def latency_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted the way a user types it: ``edgekit convert --place-exits latency``."""
    out = tmp_path_factory.mktemp("placement") / "digits-latency.edgepkg"
    cmd = [sys.executable, "-m", "edgekit", "convert", "--dataset", "digits", "--out", str(out),
           "--fast", "--quant", "ptq", "--formats", "tflite", "--place-exits", "latency",
           "--epochs", "1", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_pick_cuts_follows_the_given_costs() -> None:
    """The same fractions land on other layers when the costs say the early ones are dear."""
    m = builtin_cnn(SHAPE, 10)
    points = cut_points(m)
    by_macs = pick_cuts(m, fractions=[0.12, 0.4])
    # Pretend each cut costs as much as its position says: evenly spaced in time.
    cost = {p.layer: (i + 1) / (len(points) + 1) for i, p in enumerate(points)}
    by_cost = pick_cuts(m, fractions=[0.12, 0.4], cost=cost)
    nearest = {f: min(cost, key=lambda layer: abs(cost[layer] - f)) for f in (0.12, 0.4)}
    want = [nearest[0.12], nearest[0.4]]
    assert [c.layer for c in by_cost] == want
    assert [c.layer for c in by_cost] != [c.layer for c in by_macs]
    # What comes back keeps the MAC fractions (exit weights and MAC reports use them).
    macs = {p.layer: p.fraction for p in points}
    assert all(c.fraction == macs[c.layer] for c in by_cost)


def test_measure_cuts_times_every_candidate_with_the_interpreter() -> None:
    import numpy as np

    m = builtin_cnn(SHAPE, 10)
    points = cut_points(m)
    calib = np.random.default_rng(0).random((8, *SHAPE)).astype(np.float32)
    res = measure_cuts(m, points, calib)
    rows = res["candidates"]
    assert [r["layer"] for r in rows] == [p.layer for p in points if p.fraction <= 0.9]
    assert res["backbone_us"] > 0 and all(r["latency_us"] > 0 for r in rows)
    full = res["backbone_us"]
    for r in rows:
        # Times are recorded to 0.01 us and fractions to 1e-4: on a fast host (a few us per
        # call) the rounding of the two times alone moves their ratio by up to ~0.005 / full.
        slack = 5e-5 + 0.005 * (1 + r["latency_us"] / full) / full
        assert r["latency_fraction"] == pytest.approx(r["latency_us"] / full, abs=slack + 1e-6)
    # The deepest candidate runs five conv blocks, the first one: it must take longer.
    assert rows[-1]["latency_us"] > rows[0]["latency_us"]


def test_convert_places_exits_by_the_latency_it_recorded(latency_pkg: Path) -> None:
    report: dict[str, Any] = json.loads((latency_pkg / "report.json").read_text())
    placed = report["exit_placement"]
    assert placed["by"] == "latency" and placed["threads"] == 1
    assert placed["targets"] == [0.12, 0.4, 0.6]
    manifest = json.loads((latency_pkg / "manifest.json").read_text())
    layers = [e["layer"] for e in manifest["exits"][:-1]]
    assert placed["chosen"] == layers
    # The recorded measurements, fed back to the placement, give the same exits.
    again = pick_cuts(
        builtin_cnn(SHAPE, 10), fractions=placed["targets"], cost=latency_costs(placed)
    )
    assert [c.layer for c in again] == layers
    assert "report.json" in manifest["files"]  # the measurements are checksummed with it
    first = placed["candidates"][0]
    assert (
        f"{first['layer']} {first['latency_us']:.0f} us" in (latency_pkg / "report.md").read_text()
    )


def test_default_placement_is_by_macs(digits_pkg: Path) -> None:
    report = json.loads((digits_pkg / "report.json").read_text())
    assert report["exit_placement"]["by"] == "macs"
    assert "candidates" not in report["exit_placement"]


def test_bad_placement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="place_exits"):
        ConvertOptions(place_exits="flops")
    onnx = Path(__file__).parent / "fixtures" / "onnx" / "fmnist_resnet_nhwc.onnx"
    with pytest.raises(ConversionError, match="Keras models"):
        convert("digits", tmp_path / "x.edgepkg", model=str(onnx), place_exits="latency")
