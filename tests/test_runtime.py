"""The runtime on a real converted package, with the real interpreters."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit import ChecksumError, MissingExtraError, SchemaVersionError
from edgekit.runtime import BanditPolicy, InputError, Prediction

pytestmark = pytest.mark.slow

# Every backend is a case; one whose module is missing skips with the reason (it does not
# vanish from the run). The tflite one is in conftest.py's SKIPS_ALLOWED: numpy 2 here.
BACKENDS = [
    pytest.param(
        b,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(mod) is None,
            reason=f"{mod} is not installed (the {b} backend)",
        ),
    )
    for b, mod in (
        ("litert", "ai_edge_litert"),
        ("onnxruntime", "onnxruntime"),
        ("tensorflow", "tensorflow"),
        ("tflite", "tflite_runtime"),
    )
]
POLICIES = [
    "full",
    "threshold:0.9",
    "threshold:0.8,0.9,0.95",
    "bandit",
    "bandit:thompson",
    "bandit:ducb",
    "bandit:swucb",
    "bandit:exp3",
    "oracle",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_on_every_backend(
    digits_pkg: Path, digits: object, backend: str, policy: str
) -> None:
    d = digits
    with edgekit.load(digits_pkg, backend=backend, policy=policy) as m:
        preds = m.predict_batch(d.x_test)  # type: ignore[attr-defined]
        stats = m.stats()
    acc = np.mean([p.label == y for p, y in zip(preds, d.y_test)])  # type: ignore[attr-defined]
    assert acc > 0.85, (policy, backend, acc)
    assert sum(stats["exit_histogram"]) == len(preds)
    # the percentiles are those of the latencies the predictions report
    lat = [p.latency_ms for p in preds]
    for q in (50, 99):
        assert stats["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(lat, q), rel=1e-6)
    if policy == "full":
        assert stats["exit_histogram"][:-1] == [0, 0, 0]
        assert stats["mean_cost_fraction"] == pytest.approx(1.0)
    if policy.startswith("threshold") or policy.startswith("bandit"):
        assert stats["exit_histogram"][0] > 0, "an easy set should exit early"
        assert stats["mean_cost_fraction"] < 0.9
    if policy.startswith("bandit"):
        assert len(stats["arms"]["arms"]) == len(edgekit.runtime.DEFAULT_ARMS)


def test_prediction_record(digits_pkg: Path, digits: object) -> None:
    x = digits.x_test[0]  # type: ignore[attr-defined]
    with edgekit.load(digits_pkg, policy="full") as m:
        p = m.predict(x)
    assert isinstance(p, Prediction)
    assert p.exit == 3 and p.stages_run == 4 and not p.offloaded
    assert 0.0 < p.score <= 1.0 and p.latency_ms > 0
    assert p.name == str(p.label)
    with pytest.raises(AttributeError):
        p.label = 3  # type: ignore[misc]


def test_predict_agrees_with_batched_exits(digits_pkg: Path, digits: object) -> None:
    xs = digits.x_test[:100]  # type: ignore[attr-defined]
    with edgekit.load(digits_pkg, policy="full") as m:
        labels, confs = m.run_all_exits(xs)
        for i, x in enumerate(xs):
            p = m.predict(x)
            assert p.label == labels[i, -1]
            assert p.score == pytest.approx(confs[i, -1])


def test_uint8_and_float_inputs_agree(digits_pkg: Path, digits: object) -> None:
    x = digits.x_test[:20]  # type: ignore[attr-defined]
    # digits are 0..16 scaled by 1/16; a uint8 image for a 1/255 model is x * 255
    with edgekit.load(digits_pkg, policy="full") as m:
        a = [m.predict(v).label for v in x]
        b = [m.predict(np.round(v * 255).astype(np.uint8)).label for v in x]
        c = [m.predict(v[..., 0]).label for v in x]  # (H, W) for one channel
    assert a == b == c


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((9, 9, 1), np.float32), r"shape \(9, 9, 1\).*\(8, 8, 1\)"),
        (np.zeros((8, 8, 3), np.float32), "shape"),
        (np.zeros((8, 8, 1), np.int32), "dtype int32"),
    ],
)
def test_bad_input_is_refused_clearly(digits_pkg: Path, bad: np.ndarray, match: str) -> None:
    with edgekit.load(digits_pkg, policy="full") as m:
        with pytest.raises(InputError, match=match):
            m.predict(bad)
        assert m.predict(np.zeros((8, 8, 1), np.float32)).stages_run == 4  # still works


def test_corrupt_package_is_refused(digits_pkg: Path, tmp_path: Path) -> None:
    copy = tmp_path / "p.edgepkg"
    shutil.copytree(digits_pkg, copy)
    f = copy / "tflite" / "stage_2.tflite"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match=r"stage_2\.tflite"):
        edgekit.load(copy)


def test_newer_schema_is_refused(digits_pkg: Path, tmp_path: Path) -> None:
    copy = tmp_path / "p.edgepkg"
    shutil.copytree(digits_pkg, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SchemaVersionError):
        edgekit.load(copy)


def test_missing_backend_names_the_extra(digits_pkg: Path) -> None:
    with pytest.raises(MissingExtraError) as err:
        edgekit.load(digits_pkg, backend="edgetpu")
    assert "edgekit[" in str(err.value) or "libedgetpu" in str(err.value)
    with pytest.raises(ValueError, match="unknown backend"):
        edgekit.load(digits_pkg, backend="tpu9000")


def test_auto_backend_prefers_litert(digits_pkg: Path) -> None:
    with edgekit.load(digits_pkg) as m:
        assert m.backend == "litert"


def test_bandit_state_survives_restart(digits_pkg: Path, digits: object, tmp_path: Path) -> None:
    state = tmp_path / "state" / "bandit.json"
    xs = digits.x_test  # type: ignore[attr-defined]
    with edgekit.load(digits_pkg, policy="bandit", state=state) as m:
        m.predict_batch(xs[:200])
        before = m.policy.arm_values()  # type: ignore[attr-defined]
    assert state.is_file()
    with edgekit.load(digits_pkg, policy="bandit", state=state) as m:
        pol = m.policy
        assert isinstance(pol, BanditPolicy)
        assert pol.algo.t == 200
        assert pol.arm_values()["arms"] == before["arms"]
        m.predict(xs[0])
    assert json.loads(state.read_text())["algo"]["t"] == 201


def test_corrupt_bandit_state_is_reset_with_a_warning(digits_pkg: Path, tmp_path: Path) -> None:
    state = tmp_path / "bandit.json"
    state.write_text("{truncated")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        m = edgekit.load(digits_pkg, policy="bandit", state=state)
    assert m.policy.algo.t == 0  # type: ignore[attr-defined]
    m.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edgekit.load(digits_pkg, policy="bandit", state=state).close()  # now valid


def test_oracle_takes_earliest_exit_agreeing_with_final(digits_pkg: Path, digits: object) -> None:
    xs = digits.x_test[:100]  # type: ignore[attr-defined]
    with edgekit.load(digits_pkg, policy="oracle") as m:
        labels, _ = m.run_all_exits(xs)
        for i, x in enumerate(xs):
            p = m.predict(x)
            assert p.label == labels[i, -1]
            assert p.exit == int(np.argmax(labels[i] == labels[i, -1]))
            assert p.stages_run == 4
