"""Split computing end to end: the runtime offloading to a real ``edgekit serve`` on loopback.

The server is the real one (uvicorn, onnxruntime tails), in this process or as a
subprocess that the test kills and restarts. A slow link or a busy server is a small TCP
proxy in front of it that holds every chunk for a while. A slow device is the real
interpreters plus a sleep after every stage (stated where used).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _net import free_port, refused_port

import edgekit
from edgekit._kserve import package_sha256
from edgekit.runtime import OffloadConfig
from edgekit.runtime._offload import OffloadClient, OffloadReply

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("uvicorn") is None, reason="needs the [serve] extra"
    ),
]

NEVER = float("inf")
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(digits_pkg: Path) -> Iterator[str]:
    """The real server in this process (no batching delay: one client at a time)."""
    from edgekit.serve._config import ServeConfig
    from edgekit.serve._server import Server

    with Server(digits_pkg, ServeConfig(port=0, max_delay_ms=0.0)) as s:
        yield s.url


class SlowProxy:
    """A TCP proxy holding every chunk ``delay`` seconds in each direction (a slow link or
    a busy server); ``delay`` may change while connections are open."""

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        host, port = upstream.rsplit("/", 1)[-1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                if self.closed:
                    return
                raise
            u = socket.create_connection(self.upstream, timeout=30)
            u.settimeout(None)
            for sock in (c, u):  # no Nagle: small writes must not wait for an ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class _SlowStage:
    """A real stage runner followed by a sleep: a device slower than this host."""

    def __init__(self, run: Any, extra_s: float) -> None:
        self.run, self.extra, self.input_dtype = run, extra_s, run.input_dtype

    def __call__(self, x: np.ndarray) -> Any:
        out = self.run(x)
        time.sleep(self.extra)
        return out

    def close(self) -> None:
        self.run.close()


def _slow_device(m: Any, extra_s: float) -> Any:
    m._runners = [_SlowStage(r, extra_s) for r in m._runners]
    m._full = None  # the unsplit single call would skip the sleeps
    return m


def _local(pkg: Path, xs: np.ndarray, backend: str = "onnxruntime") -> list[tuple[int, float]]:
    """The last exit's (label, confidence) with the stages chained here, as a split does
    (the unsplit single-call model may round differently at stage boundaries)."""
    with edgekit.load(pkg, backend=backend, policy="full") as m:
        labels, confs = m.run_all_exits(xs)
    return [(int(a), float(c)) for a, c in zip(labels[:, -1], confs[:, -1])]


@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_offload_answers_what_the_device_would(
    digits_pkg: Path, digits: Any, server: str, split: int
) -> None:
    xs = digits.x_test[:120]
    # Same interpreter on both sides (the server runs onnxruntime): the same answers.
    want = _local(digits_pkg, xs)
    with edgekit.load(
        digits_pkg, backend="onnxruntime", policy=f"split:{split}", offload=server
    ) as m:
        preds = m.predict_batch(xs)
        st = m.stats()
    assert all(p.offloaded and p.split == split and p.stages_run == split for p in preds)
    assert [p.label for p in preds] == [w[0] for w in want]
    np.testing.assert_allclose([p.score for p in preds], [w[1] for w in want], rtol=1e-5)
    assert all(p.exit == 3 and p.bytes_sent > 0 and p.rtt_ms > 0 for p in preds)
    assert st["offload"]["by_split"][split] == 120 and st["offload"]["fallbacks"] == 0
    assert st["offload"]["connections"] == 1  # one keep-alive connection for all of them
    # LiteRT on the device, onnxruntime on the server: the same int8 model, two kernels.
    lite = _local(digits_pkg, xs, "litert")
    with edgekit.load(digits_pkg, backend="litert", policy=f"split:{split}", offload=server) as m:
        agree = np.mean([p.label == w[0] for p, w in zip(m.predict_batch(xs), lite)])
    assert agree >= 0.97


def test_server_logits_match_the_local_chain_within_quantization(
    digits_pkg: Path, digits: Any, server: str
) -> None:
    with edgekit.load(digits_pkg, backend="onnxruntime", policy="full") as m:
        man = m.manifest
        lq = man.stages[-1].logits.quant
        assert lq is not None
        client = OffloadClient(OffloadConfig(server), man.name, package_sha256(digits_pkg), 10)
        try:
            for x in digits.x_test[:30]:
                h = m._quant.one(x)
                feats = []
                for run in m._runners:
                    feats.append(h)
                    h, logits = run(h)
                local = lq.scale * (
                    logits.astype(np.float64) - lq.as_dtype(logits.dtype.name).zero_point
                )
                for s, f in enumerate(feats):
                    r = client.infer(s, f, m._stage_q[s])
                    assert isinstance(r, OffloadReply), r
                    np.testing.assert_allclose(r.logits, local[0], atol=1.01 * lq.scale)
                    assert r.label == int(local[0].argmax())
        finally:
            client.close()


def test_bandit_offloads_on_a_fast_link_and_stays_local_when_the_server_is_slow(
    digits_pkg: Path, digits: Any, server: str
) -> None:
    proxy = SlowProxy(server)
    xs = digits.x_test
    try:
        # Sized from this host's own round trip, not from an assumed speed: the device's 4
        # stages cost 10 round trips through the proxy (at least 2 ms more per stage than
        # here); then the server answers 5 times later than the device's own stages finish.
        with edgekit.load(digits_pkg, policy="split:0", offload=proxy.url) as m:
            rtt_s = float(np.median([m.predict(x).rtt_ms for x in xs[:20]])) / 1e3
        extra_s = min(0.025, max(0.002, 10 * rtt_s / 4))
        m = _slow_device(
            edgekit.load(
                digits_pkg,
                policy="bandit:ducb",
                offload=proxy.url,
                offload_timeout_ms=30_000,  # slow is not failed: the deadline is far away
                arms=(NEVER,),
                lam=1.0,
            ),
            extra_s,
        )
        with m:
            fast = [m.predict(x) for x in xs[:150]]
            assert sum(p.offloaded for p in fast[-50:]) >= 45
            proxy.delay = 2.5 * 4 * extra_s  # each way: a round trip of 5x the local stages
            slow = [m.predict(x) for x in xs[150:450]]
            st = m.stats()
        assert sum(not p.offloaded for p in slow[-60:]) >= 54
        assert not any(p.fallback for p in fast + slow)  # slow, but within the deadline
        best = st["arms"]["best"]
        assert best["split"] == "local"
    finally:
        proxy.close()


def _serve_subprocess(pkg: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """``edgekit serve`` on ``port``, once it answers ready; AssertionError if it exits."""
    cmd = [sys.executable, "-m", "edgekit", "serve", str(pkg), "--port", str(port),
           "--max-delay-ms", "0", *extra]  # fmt: skip
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the child writes to it as long as it runs
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise AssertionError(f"edgekit serve exited with {proc.returncode}: {err[-2000:]}")
        if _ready(port):
            return proc
        time.sleep(0.2)
    proc.kill()
    proc.wait(30)
    raise AssertionError("edgekit serve did not become ready")


def _serve_on_a_free_port(pkg: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A port that was free a moment ago may be taken before the server binds it: retry."""
    for attempt in range(3):
        port = free_port()
        try:
            return _serve_subprocess(pkg, port), port
        except AssertionError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _ready(port: int) -> bool:
    """True once the server answers ready; False while nothing listens or it is not ready
    yet. A timeout or any other error is raised, not taken for "not yet"."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return False
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionRefusedError, ConnectionResetError)):
            return False
        raise
    except (ConnectionRefusedError, ConnectionResetError):
        return False


def test_server_killed_mid_stream_every_input_answered_once(digits_pkg: Path, digits: Any) -> None:
    xs = digits.x_test[:300]
    want = _local(digits_pkg, xs)
    proc, port = _serve_on_a_free_port(digits_pkg)
    cfg = OffloadConfig(f"http://127.0.0.1:{port}", timeout_ms=2000, backoff_ms=100)
    preds = []
    try:
        with edgekit.load(digits_pkg, backend="onnxruntime", policy="split:1", offload=cfg) as m:
            for i, x in enumerate(xs):
                if i == 100:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                if i == 200:
                    assert m.stats()["offload"]["breaker"]["state"] in ("open", "half-open")
                    proc = _serve_subprocess(digits_pkg, port)
                preds.append(m.predict(x))
            st = m.stats()
    finally:
        proc.kill()
        proc.wait(30)
    assert len(preds) == 300 and st["predictions"] == 300
    assert [p.label for p in preds] == [w[0] for w in want]
    np.testing.assert_allclose([p.score for p in preds], [w[1] for w in want], rtol=1e-5)
    assert all(p.offloaded for p in preds[:100])
    assert all(p.fallback and not p.offloaded for p in preds[100:200])
    assert all(p.stages_run == 4 for p in preds[100:200])  # finished here, from stage 1 on
    assert all(p.offloaded for p in preds[-90:])  # back to the server once it answers
    off = st["offload"]
    assert off["offloaded"] + off["fallbacks"] == 300
    assert off["breaker"]["opened"] >= 1 and off["breaker"]["state"] == "closed"
    assert set(off["failures"]) <= {"refused", "network"} and off["failed"] >= 3
    assert off["skipped_while_open"] > 0  # the breaker kept most inputs from trying


def test_bearer_token(digits_pkg: Path, digits: Any) -> None:
    from edgekit.serve._config import ServeConfig
    from edgekit.serve._server import Server

    xs = digits.x_test[:8]
    with Server(digits_pkg, ServeConfig(port=0, max_delay_ms=0.0, token=TOKEN)) as s:
        with edgekit.load(digits_pkg, policy="split:0", offload=s.url) as m:
            refused = m.predict_batch(xs)
        with edgekit.load(digits_pkg, policy="split:0", offload=s.url, offload_token=TOKEN) as m:
            allowed = m.predict_batch(xs)
    assert all(p.fallback for p in refused)
    assert refused[0].offload is not None and "401" in (refused[0].offload.error or "")
    assert all(p.offloaded for p in allowed)


def test_compression_pays_for_relu_features(digits_pkg: Path, digits: Any, server: str) -> None:
    xs = digits.x_test[:40]
    with edgekit.load(digits_pkg, policy="split:1", offload=server) as m:
        shape = m.manifest.stages[1].input.shape[1:]
        raw = int(np.prod(shape))
        packed = m.predict_batch(xs)
        st = m.stats()["offload"]
    cfg = OffloadConfig(server, compress="never")
    with edgekit.load(digits_pkg, policy="split:1", offload=cfg) as m:
        plain = m.predict_batch(xs)
    assert st["compressed_requests"] == 40
    assert st["bytes_sent"] < st["bytes_uncompressed"]
    # ReLU features sit at the zero point: deflate sends fewer bytes than the tensor holds
    assert np.mean([p.bytes_sent for p in packed]) < raw
    assert all(p.bytes_sent > raw for p in plain)
    assert [p.label for p in packed] == [p.label for p in plain]


def test_https_with_a_private_ca(digits_pkg: Path, digits: Any, tmp_path: Path) -> None:
    from edgekit.serve._config import ServeConfig
    from edgekit.serve._server import Server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    cfg = ServeConfig(port=0, max_delay_ms=0.0, tls_cert=str(cert), tls_key=str(key))
    with Server(digits_pkg, cfg) as s:
        assert s.url.startswith("https://")
        # A generous deadline: the first request pays the TLS handshake on a busy CI box.
        with edgekit.load(
            digits_pkg,
            policy="split:2",
            offload=s.url,
            offload_ca=str(cert),
            offload_timeout_ms=10_000,
        ) as m:
            assert all(p.offloaded for p in m.predict_batch(digits.x_test[:5]))
        with edgekit.load(digits_pkg, policy="split:2", offload=s.url) as m:  # untrusted
            p = m.predict(digits.x_test[0])
    assert p.fallback and "network" in (p.offload.error or "")  # type: ignore[union-attr]


def test_non_offloading_policies_ignore_the_server(digits_pkg: Path, digits: Any) -> None:
    # No server listens here (connections are refused): a local policy never notices.
    with refused_port() as port:
        dead = f"http://127.0.0.1:{port}"
        with edgekit.load(digits_pkg, policy="threshold:0.9", offload=dead) as m:
            preds = m.predict_batch(digits.x_test[:10])
            st = m.stats()["offload"]
        assert not any(p.offload for p in preds) and st["requests"] == 0
        with pytest.raises(ValueError, match="offload="):
            edgekit.load(digits_pkg, policy="split:1")
        with pytest.raises(ValueError, match="past the last stage"):
            edgekit.load(digits_pkg, policy="split:7", offload=dead)
    with pytest.raises(ValueError, match="not http"):
        edgekit.load(digits_pkg, policy="bandit", offload="ftp://x")
