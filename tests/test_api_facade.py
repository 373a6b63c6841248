"""The top-level Python names a user calls: ``edgekit.load_dataset``, ``edgekit.convert``,
``edgekit.load`` with ``confidence=``, ``verify=False``, a :class:`Policy` instance and
``cost="macs"``, and ``EdgeModel.feedback`` (issue 15)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit.runtime import BanditPolicy, ThresholdPolicy

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits saved as a user would: uint8 (N, 8, 8), named classes."""
    from edgekit.data import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("npz") / "mydigits.npz"
    u8 = {k: np.round(getattr(d, k)[..., 0] * 255).astype(np.uint8) for k in ("x_train", "x_test")}
    np.savez(path, **u8, y_train=d.y_train, y_test=d.y_test, labels=np.array(NAMES))
    return path


def test_load_dataset_reads_names_npz_files_and_says_what_it_accepts(npz_file: Path) -> None:
    from edgekit.data import load_digits

    named = edgekit.load_dataset("digits")
    ref = load_digits()
    np.testing.assert_array_equal(named.x_test, ref.x_test)
    np.testing.assert_array_equal(named.y_train, ref.y_train)
    ds = edgekit.load_dataset(npz_file)
    assert ds.labels == NAMES and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() < ds.x_train.max() <= 1.0
    # the test split is the file's own; validation is cut from its training split
    assert len(ds.x_test) == len(ref.x_test)
    assert len(ds.x_train) + len(ds.x_val) == len(ref.x_train)
    assert len(ds.x_val) > 0
    np.testing.assert_allclose(ds.x_test, ref.x_test, atol=0.5 / 255)
    assert edgekit.load_dataset(f"npz:{npz_file}").labels == NAMES
    with pytest.raises(edgekit.DatasetError) as exc:
        edgekit.load_dataset("no-such-dataset")
    assert "unknown dataset" in exc.value.message and exc.value.hint
    assert "digits" in exc.value.hint and ".npz" in exc.value.hint


@pytest.mark.slow
def test_convert_takes_a_dataset_object_and_returns_the_package(
    npz_file: Path, tmp_path: Path
) -> None:
    """One cheap conversion (no training, PTQ, TFLite only) through ``edgekit.convert``."""
    ds = edgekit.load_dataset(npz_file)
    out = tmp_path / "mine.edgepkg"
    result = edgekit.convert(
        ds, out, exits=(0.3,), train="none", quant="ptq", formats=("tflite",), fast=True,
        verbose=False,
    )  # fmt: skip
    assert result.path == out and (out / "manifest.json").is_file()
    m = edgekit.read_manifest(out)
    assert result.manifest == m
    assert m.name == "mine" and m.labels == NAMES and m.formats == ("tflite",)
    assert len(m.exits) == 2 and abs(m.exits[0].macs_fraction - 0.3) < 0.2
    assert result.report["training"] == {"mode": "none"}
    assert result.report["dataset"]["classes"] == 10
    assert result.report["dataset"]["test"] == len(ds.x_test)
    assert "| exit |" in result.table() and "| 1 | final |" in result.table()
    with edgekit.load(out, policy="full") as model:
        p = model.predict(ds.x_test[0])
    assert p.name == NAMES[p.label]


# -- load's options, on the shared --fast digits package -----------------------------------


@pytest.fixture(scope="module")
def xs() -> np.ndarray:
    from edgekit.data import load_digits

    return load_digits().x_test[:120]


@pytest.fixture(scope="module")
def ys() -> np.ndarray:
    from edgekit.data import load_digits

    return load_digits().y_test[:120]


def _run(model: Any, xs: np.ndarray) -> list[Any]:
    return [model.predict(x) for x in xs]


@pytest.mark.slow
def test_confidence_measure_is_the_score_and_the_stopping_rule(
    digits_pkg: Path, xs: np.ndarray
) -> None:
    with edgekit.load(digits_pkg, policy="full", confidence="max_softmax") as m:
        soft = _run(m, xs)
    with edgekit.load(digits_pkg, policy="full", confidence="margin") as m:
        margin = _run(m, xs)
    # same answers; the margin (top-1 minus top-2 probability) is never above max-softmax
    assert [p.label for p in soft] == [p.label for p in margin]
    assert all(b.score <= a.score + 1e-9 for a, b in zip(soft, margin))
    assert any(b.score < a.score - 1e-3 for a, b in zip(soft, margin))
    # at one threshold, the stricter measure stops later
    with edgekit.load(digits_pkg, policy="threshold:0.8", confidence="max_softmax") as m:
        early = np.mean([p.exit for p in _run(m, xs)])
    with edgekit.load(digits_pkg, policy="threshold:0.8", confidence="margin") as m:
        late = np.mean([p.exit for p in _run(m, xs)])
    assert late > early
    with pytest.raises(ValueError, match="unknown confidence measure"):
        edgekit.load(digits_pkg, confidence="certainty")


@pytest.mark.slow
def test_verify_false_loads_a_package_whose_checksums_no_longer_match(
    digits_pkg: Path, tmp_path: Path, xs: np.ndarray
) -> None:
    copy = tmp_path / digits_pkg.name
    shutil.copytree(digits_pkg, copy)
    with (copy / "report.md").open("a") as f:  # listed in the manifest, not run
        f.write("\nedited by hand\n")
    with pytest.raises(edgekit.ChecksumError):
        edgekit.load(copy)
    with edgekit.load(copy, verify=False, policy="full") as m:
        got = [p.label for p in _run(m, xs[:20])]
    with edgekit.load(digits_pkg, policy="full") as m:
        want = [p.label for p in _run(m, xs[:20])]
    assert got == want


@pytest.mark.slow
def test_a_policy_instance_is_the_policy_used(digits_pkg: Path, xs: np.ndarray) -> None:
    pol = ThresholdPolicy(0.0)  # every confidence reaches 0: always the first exit
    with edgekit.load(digits_pkg, policy=pol) as m:
        preds = _run(m, xs[:30])
        assert m.policy is pol
        stats = m.stats()
    assert {p.exit for p in preds} == {0} and {p.stages_run for p in preds} == {1}
    assert stats["exit_histogram"][0] == 30 and stats["policy"] == pol.describe()


@pytest.mark.slow
def test_cost_macs_prices_the_bandit_in_macs(digits_pkg: Path, xs: np.ndarray) -> None:
    with edgekit.load(digits_pkg, policy="bandit", cost="macs") as m:
        macs = [e.macs_fraction for e in m.manifest.exits]
        preds = _run(m, xs)
        stats = m.stats()
        assert isinstance(m.policy, BanditPolicy) and m.policy.config.cost == "macs"
    assert stats["mean_cost_fraction"] == pytest.approx(np.mean([macs[p.exit] for p in preds]))
    with edgekit.load(digits_pkg, policy="bandit") as m:  # latency: measured, not the MACs
        preds = _run(m, xs)
        lat = m.stats()["mean_cost_fraction"]
    assert lat != pytest.approx(np.mean([macs[p.exit] for p in preds]), rel=1e-6)
    with pytest.raises(ValueError, match="cost must be"):
        edgekit.load(digits_pkg, policy="bandit", cost="joules")


@pytest.mark.slow
def test_feedback_penalises_wrong_early_answers(
    digits_pkg: Path, xs: np.ndarray, ys: np.ndarray
) -> None:
    with edgekit.load(digits_pkg, policy="bandit") as m:
        preds = _run(m, xs)
        before = m.stats()["arms"]
        for p, y in zip(preds, ys):
            if p.label == y:
                m.feedback(p, int(y))  # a right answer changes nothing
        assert m.stats()["arms"] == before
        wrong = [p for p in preds if p.exit < m.n_exits - 1]
        assert wrong, "the bandit stopped early on some inputs"
        for p in wrong:
            m.feedback(p, (p.label + 1) % 10)  # tell it each early answer was wrong
        after = m.stats()["arms"]
    counts = [sum(a["count"] for a in s["arms"]) for s in (before, after)]
    assert counts[1] == counts[0] + len(wrong)  # each wrong early answer is one more pull
    chosen = [a for a, b in zip(before["arms"], after["arms"]) if a["count"] != b["count"]]
    assert len(chosen) == 1  # all on the arm the bandit is playing
    (arm,) = [b for b in after["arms"] if b["threshold"] == chosen[0]["threshold"]]
    assert arm["value"] < chosen[0]["value"]  # ...whose value drops (reward 0 each time)
