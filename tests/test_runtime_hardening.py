"""The runtime against hostile or clumsy use: threads, closed models, bad input layouts,
NaN, tampered bandit state, state saved off the hot path, tokens over plain http."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit.runtime import (
    BanditPolicy,
    InputError,
    ModelClosedError,
    OffloadConfig,
    Outcome,
    SplitBanditPolicy,
)
from edgekit.runtime._offload import OffloadClient  # internal: the offload client alone, no package

N, MACS = 4, [0.1, 0.3, 0.6, 1.0]


# -- threads and close ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "threshold:0.9"])
def test_eight_threads_get_single_threaded_answers(
    digits_pkg: Path, digits: Any, policy: str
) -> None:
    xs = digits.x_test
    with edgekit.load(digits_pkg, policy=policy) as m:
        want = [(p.label, p.score, p.exit) for p in m.predict_batch(xs)]
    got: list[Any] = [None] * len(xs)
    errors: list[BaseException] = []
    with edgekit.load(digits_pkg, policy=policy) as m:
        start = threading.Barrier(8)

        def work(i: int) -> None:
            start.wait()
            try:
                for _ in range(3):
                    for j in range(i, len(xs), 8):
                        p = m.predict(xs[j])
                        got[j] = (p.label, p.score, p.exit)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = m.stats()
    assert not errors, errors[:3]
    assert got == want
    assert stats["predictions"] == 3 * len(xs)
    assert sum(stats["exit_histogram"]) == 3 * len(xs)


@pytest.mark.slow
def test_predict_after_close_is_a_clear_error(digits_pkg: Path, digits: Any) -> None:
    m = edgekit.load(digits_pkg, policy="bandit")
    m.predict(digits.x_test[0])
    m.close()
    m.close()  # twice is fine
    with pytest.raises(ModelClosedError, match="closed"):
        m.predict(digits.x_test[0])
    with pytest.raises(ModelClosedError):
        m.run_all_exits(digits.x_test[:4])


# -- input layout and values -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 64), (4, 16), (64,), (8, 1, 8), (2, 8, 8, 1), (8, 8, 1, 1)])
def test_same_size_wrong_layout_is_refused(digits_pkg: Path, shape: tuple[int, ...]) -> None:
    expects = r"expects \(8, 8, 1\) or \(1, 8, 8, 1\) or \(8, 8\)"
    with edgekit.load(digits_pkg, policy="full") as m, pytest.raises(InputError, match=expects):
        m.predict(np.zeros(shape, np.float32))


@pytest.mark.slow
def test_accepted_layouts_agree(digits_pkg: Path, digits: Any) -> None:
    x = digits.x_test[3].astype(np.float32)
    with edgekit.load(digits_pkg, policy="full") as m:
        a, b, c = m.predict(x), m.predict(x[None]), m.predict(x[..., 0])
    assert a.label == b.label == c.label and a.score == b.score == c.score


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(digits_pkg: Path, digits: Any, bad: float) -> None:
    x = digits.x_test[0].astype(np.float32).copy()
    x[3, 4, 0] = bad
    with edgekit.load(digits_pkg, policy="full") as m:
        with pytest.raises(InputError, match="NaN or infinite"):
            m.predict(x)
        with pytest.raises(InputError, match="NaN or infinite"):
            m.run_all_exits(np.stack([digits.x_test[1], x]))
        huge = np.full((8, 8, 1), 3e38, np.float32)  # finite, only saturates
        with np.errstate(over="ignore"):
            assert m.predict(huge).stages_run == 4


# -- bandit state --------------------------------------------------------------------------


def _bound(path: Path, package: str | None = "pkg-a", **kw: Any) -> BanditPolicy:
    pol = BanditPolicy(arms=(0.5, 0.9, float("inf")), state_path=str(path), **kw)
    pol.bind(N, MACS, package=package)
    return pol


def _learned(path: Path, **kw: Any) -> dict[str, Any]:
    pol = _bound(path, **kw)
    for i in range(30):
        pol.select(False)
        pol.observe(Outcome(i % N, [0.4, 0.6, 0.95, 0.99], MACS, MACS[i % N], 0.1))
    pol.save()
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _first(state: str, key: str, value: str) -> str:
    """``state`` with the first number of the list ``key`` replaced by ``value``."""
    return re.sub(rf'"{key}":\[[^,\]]+', f'"{key}":[{value}', state, count=1)


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s.replace('"t":30', '"t":Infinity'),
        lambda s: s.replace('"t":30', '"t":' + "9" * 400),
        lambda s: s.replace('"t":30', '"t":-4'),
        lambda s: s.replace('"t":30', '"t":true'),
        lambda s: _first(s, "cnt", "NaN"),
        lambda s: _first(s, "cnt", "-5.0"),
        lambda s: s.replace('"lambda":0.15', '"lambda":Infinity'),
        lambda s: s.replace('"lambda":0.15', '"lambda":1e300'),
        lambda s: s.replace('"lambda":0.15', '"lambda":"x"'),
        lambda s: s.replace('"algo":{', '"algo":{"deep":' + _nest(100_000) + ",", 1),
        lambda s: _nest(100_000),
        lambda s: _first(s, "sum", "1e9"),
        lambda s: _first(s, "cnt", '"3"'),
        lambda s: "[]",
        lambda s: s[: len(s) // 2],
    ],
)
def test_invalid_state_is_reset_with_a_warning(tmp_path: Path, tamper: Any) -> None:
    path = tmp_path / "b.json"
    _learned(path)
    text = path.read_text()
    bad = tamper(text)
    assert bad != text
    path.write_text(bad)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        pol = _bound(path)
    assert pol.algo.t == 0 and pol.lam == 0.15
    assert all(c == 0 for c in pol.algo.counts())


def test_state_of_another_package_is_reset(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    saved = _learned(path)
    assert saved["package"] == "pkg-a" and saved["algo"]["t"] == 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _bound(path).algo.t == 30  # same package: learning kept
    with pytest.warns(RuntimeWarning, match="another package"):
        assert _bound(path, package="pkg-b").algo.t == 0


def test_split_bandit_state_is_checked_alike(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    pol = SplitBanditPolicy(arms=(0.5, float("inf")), state_path=str(path))
    pol.bind(N, MACS, package="pkg-a")
    pol.select(True)
    pol.observe(Outcome(3, [0.4, 0.6, 0.95, 0.99], MACS, 1.0, 0.1))
    pol.save()
    path.write_text(path.read_text().replace('"lambda":0.15', '"lambda":NaN'))
    again = SplitBanditPolicy(arms=(0.5, float("inf")), state_path=str(path))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again.bind(N, MACS, package="pkg-a")
    assert again.algo.t == 0


@pytest.mark.parametrize("lam", [float("inf"), float("nan"), -1.0])
def test_bad_lambda_in_the_config_is_refused(lam: float) -> None:
    with pytest.raises(ValueError, match="lam"):
        BanditPolicy(lam=lam)


@pytest.mark.slow
def test_state_from_another_package_through_load(
    digits_pkg: Path, digits: Any, tmp_path: Path
) -> None:
    other = tmp_path / "other.edgepkg"
    shutil.copytree(digits_pkg, other)
    man = json.loads((other / "manifest.json").read_text())
    man["name"] = "other"
    (other / "manifest.json").write_text(json.dumps(man))
    state = tmp_path / "bandit.json"
    with edgekit.load(digits_pkg, policy="bandit", state=state) as m:
        m.predict_batch(digits.x_test[:50])
    with pytest.warns(RuntimeWarning, match="another package"):
        m = edgekit.load(other, policy="bandit", state=state)
    assert m.policy.algo.t == 0  # type: ignore[attr-defined]
    m.close()


# -- saving off the hot path -------------------------------------------------------------------


@pytest.mark.slow
def test_predict_never_writes_the_state(digits_pkg: Path, digits: Any, tmp_path: Path) -> None:
    state = tmp_path / "bandit.json"
    xs = np.concatenate([digits.x_test] * 3)  # more than the old save-every-500
    with edgekit.load(digits_pkg, policy="bandit", state=state, save_interval_s=3600) as m:
        m.predict_batch(xs)
        assert not state.exists()
    assert json.loads(state.read_text())["algo"]["t"] == len(xs)  # saved on close


@pytest.mark.slow
def test_state_is_saved_on_a_timer(digits_pkg: Path, digits: Any, tmp_path: Path) -> None:
    state = tmp_path / "bandit.json"
    m = edgekit.load(digits_pkg, policy="bandit", state=state, save_interval_s=0.2)
    try:
        m.predict_batch(digits.x_test[:100])
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(state.read_text())["algo"]["t"] == 100  # without close()
        m.predict_batch(digits.x_test[:20])
        deadline = time.monotonic() + 10
        while json.loads(state.read_text())["algo"]["t"] != 120:
            assert time.monotonic() < deadline, "the timer did not save the newer state"
            time.sleep(0.05)
    finally:
        m.close()
    assert not any(t.name == "edgekit-autosave" for t in threading.enumerate())


def test_a_bad_save_interval_is_refused(tmp_path: Path) -> None:
    from edgekit.runtime._persist import Autosave  # internal: the autosave timer alone

    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="save interval"):
            Autosave(lambda: None, threading.Lock(), bad)


# -- offload token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, warns",
    [
        ("http://10.1.2.3:8000", True),
        ("http://server.example:8000", True),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
        ("https://10.1.2.3:8000", False),
    ],
)
def test_token_over_plain_http_to_another_host_warns(url: str, warns: bool) -> None:
    cfg = OffloadConfig(url, token="s3cret")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        OffloadClient(cfg, "digits", "0" * 64, 10).close()
    hits = [w for w in seen if "clear text" in str(w.message)]
    assert bool(hits) == warns, [str(w.message) for w in seen]
    assert all("s3cret" not in str(w.message) for w in seen)
