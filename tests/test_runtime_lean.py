"""policy=full's short path (``EdgeModel._lean_run``) and the pieces it relies on: it must
answer exactly what the general path answers, count the same, and keep the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit._package import InputSpec, QuantParams
from edgekit.runtime import NEVER, Decision, InputError, ModelClosedError, Needs, Outcome, Policy
from edgekit.runtime._confidence import Confidence
from edgekit.runtime._input import Quantizer


@pytest.mark.parametrize(
    ("scale", "zp", "dtype", "shift"),
    [
        (1 / 255, -128, "int8", 128),  # pixel / 255 on an int8 grid of step 1/255
        (1 / 255, 0, "uint8", 0),
        (2 / 255, -128, "int8", None),  # two pixels per step: a table, not a shift
    ],
)
def test_quantizer_shift_matches_the_table(
    scale: float, zp: int, dtype: str, shift: int | None
) -> None:
    q = Quantizer(InputSpec((4, 64, 1)), QuantParams(scale, zp, dtype))
    assert (None if q.shift is None else int(q.shift)) == shift
    x = np.arange(256, dtype=np.uint8).reshape(4, 64, 1)
    expected = q.batch(x[None])[0]  # the table lookup
    assert np.array_equal(q.one(x)[0], expected)
    assert np.array_equal(q.one(x[..., 0])[0], expected)  # (H, W) for one channel


@pytest.mark.parametrize(
    ("scale", "zp", "dtype"),
    [(1 / 255, -128, "int8"), (1 / 255, 0, "uint8"), (0.25, -3, "int8"), (0.0213, 7, "uint8")],
)
def test_quantizer_float_images_round_once_and_clip(scale: float, zp: int, dtype: str) -> None:
    q = Quantizer(InputSpec((4, 64, 1)), QuantParams(scale, zp, dtype))
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 4, (4, 64, 1)).astype(np.float32)
    x[0, :40, 0] = (np.arange(-20, 20) + 0.5) * np.float32(scale)  # ties (exact at 0.25)
    x[1, :2, 0] = [1e15, -1e15]  # far out of range: clipped, not refused
    # Reference: x / scale as the quantizer computes it (float32), plus the zero point in
    # exact arithmetic, rounded half to even once, then clipped.
    f = (x * np.float32(1 / scale)).astype(np.float64)
    want = np.clip(np.rint(f + zp), lo, hi).astype(dtype)
    out = np.zeros((4, 64, 1), dtype)
    q.into(out)(x)
    assert np.array_equal(out, want)
    assert np.array_equal(q.one(x)[0], want)
    assert np.array_equal(q.batch(np.stack([x, x[::-1]]))[1], want[::-1])
    assert np.array_equal(q.one(x.astype(np.float64))[0], q.one(x)[0])
    if scale == 1 / 255:  # pixels / 255: the same bytes as the uint8 table gives
        px = rng.integers(0, 256, (4, 64, 1)).astype(np.uint8)
        assert np.array_equal(q.one(px.astype(np.float32) / 255)[0], q.one(px)[0])


def test_quantizer_into_checks_every_input_and_writes_nothing_on_error() -> None:
    q = Quantizer(InputSpec((4, 64, 1)), QuantParams(1 / 255, -128, "int8"))
    out = np.full((4, 64, 1), 7, np.int8)
    write = q.into(out)
    px = np.arange(256, dtype=np.uint8).reshape(4, 64, 1)
    for bad in (
        np.zeros((3, 3), np.uint8),
        np.zeros((1, 256), np.uint8),
        np.full((4, 64, 1), np.nan, np.float32),
        np.where(px == 9, np.inf, px / 255).astype(np.float32),
        px.astype(np.int32),
    ):
        with pytest.raises(InputError):
            write(bad)
        assert (out == 7).all()
    for form in (px, px[None], px[..., 0], (px / 255).tolist(), px / 255.0):
        out[...] = 0
        write(form)
        assert np.array_equal(out, q.one(px)[0])
    with pytest.raises(ValueError, match="out must be"):
        q.into(np.zeros((4, 64, 1), np.uint8))


@pytest.mark.parametrize("measure", ["max_softmax", "margin", "entropy"])
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_confidence_reader_reads_the_buffer_as_it_is_at_each_call(measure: str, dtype: str) -> None:
    conf = Confidence(0.07, measure)
    buf = np.zeros((1, 10), dtype)
    read = conf.reader(buf)
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    for _ in range(50):
        v = rng.integers(info.min, info.max, (1, 10), endpoint=True).astype(dtype)
        buf[...] = v
        lab, c = read()
        buf[...] = 0  # what it returned is its own, not the buffer's
        assert (lab, c) == conf.one(v)
        assert type(lab) is int and type(c) is float


class _Counting(Policy):
    """Runs every stage without asking for confidences (as ``full``), counts its calls,
    and for inputs 5..9 stops at the first exit instead."""

    name = "counting"
    needs = Needs(confidences=False)

    def __init__(self) -> None:
        self.selected = 0
        self.outcomes: list[tuple[int, float]] = []

    def select(self, ready: bool) -> Decision:
        self.selected += 1
        early = 5 < self.selected <= 10
        return Decision(
            (0.0,) + (NEVER,) * (self.n_exits - 1) if early else (NEVER,) * self.n_exits
        )

    def observe(self, outcome: Outcome) -> None:
        self.outcomes.append((outcome.exit, outcome.latency_ms))


def _pixels(digits: Any, n: int) -> np.ndarray:
    return np.round(np.asarray(digits.x_test[:n]) * 255).astype(np.uint8)


def test_full_answers_what_the_general_path_answers(digits_pkg: Path, digits: Any) -> None:
    x = _pixels(digits, 40)
    with (
        edgekit.load(digits_pkg, backend="litert", policy="full") as lean,
        edgekit.load(digits_pkg, backend="litert", policy="full", unsplit=False) as staged,
    ):
        assert lean._run != lean._predict  # the short path is the one taken
        for v in x:
            a, b = lean.predict(v), staged.predict(v)
            f = lean.predict(v.astype(np.float32) / 255)  # float: through Quantizer.one
            assert (a.label, a.exit, a.stages_run, a.name) == (
                b.label,
                b.exit,
                b.stages_run,
                b.name,
            )
            assert a.score == pytest.approx(b.score, abs=1e-12)
            assert (f.label, f.score) == (a.label, a.score)
            assert a.latency_ms > 0 and not a.offloaded and a.offload is None
        s = lean.stats()
        assert s["predictions"] == 80 and s["exit_histogram"][-1] == 80
        assert s["latency_ms"]["p50"] > 0
        with pytest.raises(InputError):
            lean.predict(np.zeros((3, 3), np.uint8))
        with pytest.raises(InputError):
            lean.predict(np.full(x[0].shape, np.nan, np.float32))
    with pytest.raises(ModelClosedError):
        lean.predict(x[0])


def test_a_lean_policy_is_asked_once_per_input_and_told_each_outcome(
    digits_pkg: Path, digits: Any
) -> None:
    x = _pixels(digits, 15)
    pol = _Counting()
    with edgekit.load(digits_pkg, backend="litert", policy=pol) as m:
        preds = [m.predict(v) for v in x]
    assert pol.selected == 15 and len(pol.outcomes) == 15
    last = len(m.manifest.exits) - 1
    assert [p.exit for p in preds[5:10]] == [0] * 5  # the decision changed: stages path
    assert all(p.exit == last for p in preds[:5] + preds[10:])
    assert [e for e, _ in pol.outcomes] == [p.stages_run - 1 for p in preds]
    assert all(ms == p.latency_ms for (_, ms), p in zip(pol.outcomes, preds))


def test_stage_runners_still_resize_for_batches(digits_pkg: Path, digits: Any) -> None:
    x = _pixels(digits, 300)
    with edgekit.load(digits_pkg, backend="litert", policy="bandit") as m:
        one = [m.predict(v).label for v in x[:5]]
        labels, _ = m.run_all_exits(x, batch=128)  # 128, 128, then 44: two resizes
        assert [m.predict(v).label for v in x[:5]] == one
    assert labels.shape == (300, len(m.manifest.exits))


# -- the stage loop on the interpreters' buffers (EdgeModel._staged_run) ----------------


def _general(m: Any) -> Any:
    """The same model on the general path (``_predict``: set_tensor/get_tensor copies)."""
    m._run = m._predict
    return m


@pytest.mark.parametrize("policy", ["bandit", "threshold:0.9", "threshold:0.6,0.99,0.9"])
def test_thresholds_in_place_answer_what_the_general_path_answers(
    digits_pkg: Path, digits: Any, policy: str
) -> None:
    x8 = _pixels(digits, 200)
    xf = np.asarray(digits.x_test[:200], np.float32)
    # cost="macs": the bandit's choices do not depend on measured times, so both agree.
    kw: dict[str, Any] = {"cost": "macs"} if policy == "bandit" else {}
    with (
        edgekit.load(digits_pkg, backend="litert", policy=policy, **kw) as lean,
        edgekit.load(digits_pkg, backend="litert", policy=policy, **kw) as general,
    ):
        assert lean._lends_stages  # the in-place loop is the one taken
        _general(general)
        early = 0
        for i in range(len(x8)):
            v = x8[i] if i % 3 else xf[i]  # uint8 pixels and float ones, mixed
            a, b = lean.predict(v), general.predict(v)
            assert a[:4] == b[:4] and a.name == b.name  # label, score, exit, stages run
            assert a.latency_ms > 0 and not a.offloaded
            early += a.exit < lean.n_exits - 1
        assert early > 0  # some inputs stopped early, some (bandit: never-arm) did not
        sa, sb = lean.stats(), general.stats()
        assert sa["predictions"] == sb["predictions"] == 200
        assert sa["exit_histogram"] == sb["exit_histogram"]
        if policy == "bandit":
            va = [a["count"] for a in sa["arms"]["arms"]]
            assert va == [a["count"] for a in sb["arms"]["arms"]]


def test_buffers_in_place_stay_right_across_calls_batches_and_errors(
    digits_pkg: Path, digits: Any
) -> None:
    x = _pixels(digits, 120)
    keep = x.copy()
    with (
        edgekit.load(digits_pkg, backend="litert", policy="threshold:0.95") as lean,
        edgekit.load(digits_pkg, backend="litert", policy="threshold:0.95") as general,
    ):
        _general(general)
        want = [general.predict(v) for v in x]
        first = [lean.predict(v) for v in x]
        assert np.array_equal(x, keep)  # the caller's images are read, never written
        assert [p[:4] for p in first] == [p[:4] for p in want]
        # A batch resizes the stage interpreters: their buffers are let go and lent again.
        labels, confs = lean.run_all_exits(x, batch=64)
        assert lean._lends_stages
        want_l, want_c = general.run_all_exits(x, batch=50)
        assert np.array_equal(labels, want_l) and np.allclose(confs, want_c)
        lean.stage_latency_ms(x, n=5)
        # Bad inputs raise and leave nothing behind for the next input.
        for bad in (
            np.zeros((3, 3), np.uint8),
            np.zeros((1, 64), np.uint8),
            np.full(x[0].shape, np.nan, np.float32),
            np.full(x[0].shape, np.inf, np.float32),
            x[0].astype(np.int32),
        ):
            with pytest.raises(InputError):
                lean.predict(bad)
        again = [lean.predict(v) for v in reversed(x)]
        assert [p[:4] for p in again] == [p[:4] for p in reversed(want)]
        # Other forms of one image take the quantizer's way and answer the same.
        assert lean.predict(x[5][None])[:4] == want[5][:4]
        assert lean.predict(x[5][..., 0])[:4] == want[5][:4]
        as_list = (x[5] / 255.0).tolist()  # not an array: float64 through np.asarray
        assert lean.predict(as_list)[:4] == general.predict(as_list)[:4]
    with pytest.raises(ModelClosedError):
        lean.predict(x[0])


def test_thresholds_in_place_serialize_threads(digits_pkg: Path, digits: Any) -> None:
    import threading

    x = _pixels(digits, 100)
    with edgekit.load(digits_pkg, backend="litert", policy="threshold:0.9") as m:
        want = [m.predict(v)[:4] for v in x]
        got: dict[int, list[Any]] = {}

        def work(t: int) -> None:
            got[t] = [m.predict(v)[:4] for v in x]

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(got[t] == want for t in range(4))
        assert m.stats()["predictions"] == 500


def test_seams_and_servers_take_the_general_path(digits_pkg: Path) -> None:
    def same(k: int, r: Any) -> Any:
        return r

    for kw in ({"wrap_stage": same}, {"unsplit": False}):
        with edgekit.load(digits_pkg, backend="litert", policy="bandit", **kw) as m:
            assert not m._lends_stages and m._run == m._predict
    with edgekit.load(digits_pkg, backend="litert", policy="oracle") as m:
        assert not m._lends_stages  # runs every exit: not a thresholds-only policy
    with edgekit.load(digits_pkg, backend="onnxruntime", policy="bandit") as m:
        assert not m._lends_stages  # no buffers lent
