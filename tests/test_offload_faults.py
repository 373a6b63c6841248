"""Offload failures, with a raw-socket stand-in for the server (unit-level fault injection).

The stand-in (``FakeServer``, tests/_standin.py) answers the way a broken or slow server
would: garbage bytes, HTTP 500, a 4xx with a JSON error, a body of the wrong shape, NaN, a
hang past the deadline, or a dropped connection. The happy path against the real
``edgekit serve`` is in test_offload.py; here every input must still be answered, on the
device, exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _net import refused_port
from _standin import FakeServer
from _wait import wait_for

import edgekit
from edgekit import _kserve as kserve
from edgekit.data import load_digits
from edgekit.runtime import OffloadConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture(scope="module")
def xs() -> np.ndarray:
    return load_digits().x_test[:60]


def _local(pkg: Path, xs: np.ndarray) -> list[tuple[int, int]]:
    with edgekit.load(pkg, policy="full") as m:
        return [(p.label, p.exit) for p in m.predict_batch(xs)]


def _cfg(url: str, **kw: object) -> OffloadConfig:
    base: dict[str, object] = {"timeout_ms": 300.0, "backoff_ms": 50.0, "failures": 3}
    base.update(kw)
    return OffloadConfig(url, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mode, kind",
    [
        ("garbage", "garbage"),
        ("500", "http"),
        ("401", "http"),
        ("badshape", "garbage"),
        ("nan", "garbage"),
        ("drop", "network"),
        ("slow", "timeout"),
    ],
)
def test_a_bad_server_costs_nothing_but_time(
    digits_pkg: Path,
    xs: np.ndarray,
    fake: FakeServer,
    mode: str,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.mode = mode
    if mode == "slow":
        fake.mode, fake.delay = "ok", 0.5  # past the 0.3 s deadline
    want = _local(digits_pkg, xs)
    caplog.set_level(logging.WARNING, logger="edgekit")
    # A long backoff: no probe may slip in while the 20 inputs run on a loaded machine.
    with edgekit.load(digits_pkg, policy="split:1", offload=_cfg(fake.url, backoff_ms=60e3)) as m:
        preds = [m.predict(x) for x in xs[:20]]
        st = m.stats()
    assert len(preds) == 20 and st["predictions"] == 20
    assert [(p.label, p.exit) for p in preds] == want[:20]  # finished here, from stage 1 on
    assert all(p.fallback and not p.offloaded and p.split == 1 for p in preds)
    assert all(p.stages_run == 4 for p in preds)
    assert preds[0].offload is not None and preds[0].offload.error.startswith(kind)
    off = st["offload"]
    assert off["failures"] == {kind: 3}  # three tries, then the breaker opened
    assert off["breaker"]["opened"] >= 1 and off["skipped_while_open"] >= 1
    assert off["fallbacks"] == 20 and off["offloaded"] == 0
    assert "finishes the input" in caplog.text
    if mode == "slow":
        assert preds[0].rtt_ms >= 290  # it waited for the deadline, not for the server
        assert preds[5].rtt_ms == 0  # the breaker spared the later inputs the wait


def test_connection_refused(digits_pkg: Path, xs: np.ndarray) -> None:
    with (
        refused_port() as port,  # bound, not listening: refused for as long as the test runs
        edgekit.load(digits_pkg, policy="split:0", offload=_cfg(f"http://127.0.0.1:{port}")) as m,
    ):
        preds = m.predict_batch(xs[:10])
        st = m.stats()["offload"]
    assert [(p.label, p.exit) for p in preds] == _local(digits_pkg, xs[:10])
    assert st["failures"] == {"refused": 3} and st["fallbacks"] == 10


def test_breaker_probes_after_backoff_and_closes_when_the_server_recovers(
    digits_pkg: Path, xs: np.ndarray, fake: FakeServer
) -> None:
    fake.mode = "500"
    # A 1 s backoff: no probe can slip in between the five inputs on a loaded machine.
    with edgekit.load(digits_pkg, policy="split:2", offload=_cfg(fake.url, backoff_ms=1e3)) as m:
        for x in xs[:5]:
            assert m.predict(x).fallback
        assert m.stats()["offload"]["breaker"]["state"] == "open"
        tried = len(fake.requests)
        assert tried == 3
        fake.mode = "ok"
        breaker = lambda: m.stats()["offload"]["breaker"]["state"]  # noqa: E731
        wait_for(lambda: breaker() == "half-open", 10, "the 1 s backoff to pass")
        p = m.predict(xs[5])  # the probe
        assert p.offloaded and p.label == 3 and p.split == 2 and p.bytes_sent > 0
        assert m.stats()["offload"]["breaker"]["state"] == "closed"
        assert all(m.predict(x).offloaded for x in xs[6:10])
    assert len(fake.requests) == tried + 5


def test_reconnects_when_the_server_closes_an_idle_connection(
    digits_pkg: Path, xs: np.ndarray, fake: FakeServer
) -> None:
    with edgekit.load(digits_pkg, policy="split:0", offload=_cfg(fake.url)) as m:
        assert m.predict(xs[0]).offloaded
        fake.mode = "drop"  # the server closes the kept-alive connection on the next request
        p = m.predict(xs[1])
        assert p.fallback  # tried once more on a new connection, which was dropped too
        fake.mode = "ok"
        assert m.predict(xs[2]).offloaded
        st = m.stats()["offload"]
    assert st["failures"] == {"network": 1}
    assert st["connections"] >= 2


def test_request_carries_the_contract(digits_pkg: Path, xs: np.ndarray, fake: FakeServer) -> None:
    with edgekit.load(digits_pkg, policy="split:1", offload=fake.url, offload_token="s3cret") as m:
        p = m.predict(xs[0])
        q = m.manifest.stages[1].input.quant
    assert p.offloaded
    path, headers, body = fake.requests[0]
    name = m.manifest.name
    assert path == f"/v2/models/{name}-split1/infer"
    assert headers["Authorization"] == "Bearer s3cret"
    req = kserve.decode_infer_request(body, headers)
    t = req.input("input")
    assert t.datatype in ("INT8", "UINT8") and t.data.shape[0] == 1
    assert t.data.shape[1:] == tuple(m.manifest.stages[1].input.shape[1:])
    assert q is not None and t.parameters["scale"] == pytest.approx(q.scale)
    assert req.parameters["package_sha256"] == kserve.package_sha256(digits_pkg)
    assert req.binary_output
    # bytes_sent is what went on the wire: request line, headers, body
    raw = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    assert p.bytes_sent == len(raw) + 2 + len(body)
