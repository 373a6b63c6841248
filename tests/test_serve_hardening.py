"""``edgekit serve`` against hostile clients: a real server on loopback, real sockets.

Floods of cheap requests that inflate to huge ones, slowloris connections, too many
connections, requests that used to answer 500, the auth exemption, bad config values, and a
bounded fuzz of the running server (no 5xx, flat memory)."""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import logging
import math
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _serving import Client, Local
from _wait import LineReader, stop_process, wait_for

from edgekit._kserve import HEADER_LENGTH, encode_infer_request, encode_split_request
from edgekit.data import load_digits
from edgekit.serve import ServeConfig, ServeError, Server

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow

TOKEN = "hardening-token"


@pytest.fixture(scope="module")
def local(digits_pkg: Path) -> Local:
    return Local(digits_pkg)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_digits().x_test[:8]


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _split_request(local: Local, images: np.ndarray, at: int, **kw: Any) -> tuple[bytes, dict]:
    x = local.features(images, at)
    scale, zp = local.input_quant(at)
    return encode_split_request(x, scale=scale, zero_point=zp, **kw)


# -- cheap requests that cost a lot ----------------------------------------------------------


def _bomb(local: Local, rows: int) -> tuple[bytes, dict[str, str]]:
    """A JSON request of ``rows`` zero rows at split 0, gzip-compressed (a few KB)."""
    shape = [rows, *local.m.stages[0].input.shape[1:]]
    n = math.prod(shape)
    head = {"name": "input", "datatype": local.dtype.name.upper(), "shape": shape, "data": []}
    doc = json.dumps({"inputs": [head]}).replace("[]", "[" + ",".join(["0"] * n) + "]").encode()
    body = gzip.compress(doc, 9)
    return body, {"Content-Type": "application/json", "Content-Encoding": "gzip"}


def test_a_flood_of_inflating_requests_is_refused_and_health_keeps_answering(
    digits_pkg: Path, local: Local, images: np.ndarray
) -> None:
    """7 KB of gzip inflating to a 60,000-row JSON request: 413 from the declared shape, decoded
    off the event loop, while /v2/health/live answers every poll within a bounded deadline."""
    body, headers = _bomb(local, 60_000)
    assert len(body) < 20_000
    deadline_s = 1.5
    with Server(digits_pkg, ServeConfig(port=0, max_rows=256)) as srv:
        host, port = _host_port(srv.url)
        stop = threading.Event()
        statuses: Counter[int | str] = Counter()
        errors: list[str] = []

        def flood() -> None:
            conn = http.client.HTTPConnection(host, port, timeout=20)
            while not stop.is_set():
                try:
                    conn.request("POST", "/v2/models/digits-split0/infer", body, headers)
                    r = conn.getresponse()
                    raw = r.read()
                    statuses[r.status] += 1
                    if r.status == 413 and not errors:
                        errors.append(json.loads(raw)["error"])
                except (OSError, http.client.HTTPException) as exc:
                    statuses[type(exc).__name__] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=20)
            conn.close()

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        waits = []
        probe = http.client.HTTPConnection(host, port, timeout=deadline_s)
        try:
            end = time.monotonic() + 5
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    probe.request("GET", "/v2/health/live")
                    r = probe.getresponse()
                    assert (r.status, json.loads(r.read())) == (200, {"live": True})
                except (OSError, http.client.HTTPException):
                    waits.append(math.inf)  # no answer within the deadline
                    probe.close()
                    probe = http.client.HTTPConnection(host, port, timeout=deadline_s)
                else:
                    waits.append(time.monotonic() - t0)
                time.sleep(0.05)
        finally:
            stop.set()
            probe.close()
            for t in threads:
                t.join(30)
        # a normal request is still answered exactly
        c = Client(srv.url)
        out = c.infer("digits-split1", *_split_request(local, images[:2], 1))
        np.testing.assert_array_equal(out["logits"], local.tail(local.features(images[:2], 1), 1))
        c.close()
    assert statuses[413] >= 4 and set(statuses) <= {413, 503}, statuses
    assert "60000 rows; this server takes at most 256" in errors[0]
    assert max(waits) < deadline_s, f"health waited up to {max(waits):.2f} s: {waits}"


def test_rows_per_request_are_capped(digits_pkg: Path, local: Local, images: np.ndarray) -> None:
    with Server(digits_pkg, ServeConfig(port=0, max_rows=4)) as srv:
        c = Client(srv.url)
        assert c.infer("digits-split2", *_split_request(local, images[:4], 2))["logits"].shape == (
            4,
            10,
        )
        for binary in (True, False):
            body, headers = _split_request(local, images[:5], 2, binary=binary)
            status, err = c.json(
                "POST", "/v2/models/digits-split2/infer", body=body, headers=headers
            )
            assert status == 413
            assert "5 rows; this server takes at most 4" in err["error"]
        c.close()


# -- slowloris and too many connections ---------------------------------------------------


def _answer(sock: socket.socket) -> bytes | None:
    """What the server sent before closing ``sock`` (b"" for nothing); None while it is
    still open and silent. Never blocks."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return None
    data = b""
    sock.settimeout(2)  # a timeout here is an error: the server sent something and kept it open
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:  # closed with a reset: closed all the same
        pass
    return data


def test_slowloris_connections_are_closed(digits_pkg: Path) -> None:
    """5 clients sending their headers at 1 byte / 5 s and 1 sending its body that way: all
    are closed (the body one with a 408) while a normal client is served throughout."""
    cfg = ServeConfig(port=0, header_timeout_s=6.0, body_timeout_s=6.0)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with Server(digits_pkg, cfg) as srv:
        host, port = _host_port(srv.url)
        slow = [socket.create_connection((host, port), timeout=5) for _ in range(5)]
        body_slow = socket.create_connection((host, port), timeout=5)
        body_slow.sendall(
            b"POST /v2/models/digits-split0/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sent = [0] * len(slow)
        closed_at: dict[int, float] = {}
        answers: dict[int, bytes] = {}
        start = time.monotonic()
        probe = Client(srv.url)
        try:
            next_byte = start
            while time.monotonic() - start < 14 and len(closed_at) < len(slow) + 1:
                now = time.monotonic()
                if now >= next_byte:  # one more byte on every open connection
                    for i, s in enumerate([*slow, body_slow]):
                        if i in closed_at:
                            continue
                        data = head[sent[i] : sent[i] + 1] if i < len(slow) else b"{"
                        try:
                            s.sendall(data)
                        except ConnectionError:  # broken pipe or reset: the server closed it
                            closed_at[i] = now - start
                            continue
                        if i < len(slow):
                            sent[i] += 1
                    next_byte = now + 5
                for i, s in enumerate([*slow, body_slow]):
                    if i not in closed_at and (got := _answer(s)) is not None:
                        closed_at[i] = now - start
                        answers[i] = got
                assert probe.json("GET", "/v2/health/live") == (200, {"live": True})
                time.sleep(0.2)
        finally:
            probe.close()
            for s in [*slow, body_slow]:
                s.close()
    assert sorted(closed_at) == list(range(len(slow) + 1)), f"still open after 14 s: {closed_at}"
    assert all(5.5 < t < 10 for t in closed_at.values()), closed_at
    assert max(sent) <= 3  # they had sent 2 bytes of their headers
    assert all(answers.get(i) == b"" for i in range(len(slow))), answers  # closed, no answer
    assert answers[len(slow)].startswith(b"HTTP/1.1 408 "), answers[len(slow)][:200]
    assert b"did not arrive within 6 s" in answers[len(slow)]


def _taken_in(host: str, port: int) -> socket.socket:
    """A connection the server has surely taken in (one request answered on it), left idle."""
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"}"):  # the JSON body {"live": true} ends the answer
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    return s


def test_connections_beyond_the_cap_are_closed(digits_pkg: Path) -> None:
    with Server(digits_pkg, ServeConfig(port=0, max_connections=5)) as srv:
        host, port = _host_port(srv.url)
        idle = [_taken_in(host, port) for _ in range(5)]
        extra = socket.create_connection((host, port), timeout=5)
        extra.settimeout(5)  # no answer within 5 s fails: it must be closed, not left waiting
        try:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            got = extra.recv(100)
        except ConnectionError:  # reset or broken pipe: closed all the same
            got = b""
        assert got == b"", got  # closed without an answer
        extra.close()
        assert all(_answer(s) is None for s in idle)  # the others are untouched
        idle.pop().close()
        deadline = time.monotonic() + 10  # once the server has seen that close, one more fits
        while True:
            c = Client(srv.url)
            try:
                assert c.json("GET", "/v2/health/live") == (200, {"live": True})
                break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline, "no room after a connection closed"
                time.sleep(0.2)
            finally:
                c.close()
        for s in idle:
            s.close()


# -- requests that used to answer 500 -----------------------------------------------------


def test_long_numbers_and_huge_scales_are_4xx(
    digits_pkg: Path, local: Local, images: np.ndarray
) -> None:
    x = local.features(images[:1], 1)
    scale, zp = local.input_quant(1)
    shape = list(x.shape)
    with Server(digits_pkg, ServeConfig(port=0)) as srv:
        c = Client(srv.url)
        digits = b'{"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [1'
        digits += b"0" * 5000 + b"]}]}"
        status, err = c.json("POST", "/v2/models/digits-split1/infer", body=digits)
        assert status == 400 and "not valid JSON" in err["error"]
        for bad in ("1" + "0" * 400, "1e400", "-1", "0"):
            inp = {"name": "input", "datatype": local.dtype.name.upper(), "shape": shape}
            inp |= {"data": x.ravel().tolist(), "parameters": {"scale": "S", "zero_point": zp}}
            doc = json.dumps({"inputs": [inp]}).replace('"S"', bad).encode()
            status, err = c.json("POST", "/v2/models/digits-split1/infer", body=doc)
            assert status == 400, (bad, err)
            assert "'scale' must be a positive finite number" in err["error"]
        status, err = c.json(
            "POST",
            "/v2/models/digits-split1/infer",
            body=json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": local.dtype.name.upper(),
                            "shape": shape,
                            "data": x.ravel().tolist(),
                            "parameters": {"scale": scale, "zero_point": 10**300},
                        }
                    ]
                }
            ).encode(),
        )
        assert status == 400 and "out of range" in err["error"] and len(err["error"]) < 300
        c.close()


def test_an_internal_error_answers_500_without_its_text(
    digits_pkg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Server(digits_pkg, ServeConfig(port=0)) as srv:
        assert srv.handler is not None

        def broken(split: int | None) -> dict[str, Any]:
            raise RuntimeError("secret detail /srv/models/key.pem")

        srv.handler.model_metadata = broken  # type: ignore[method-assign]
        c = Client(srv.url)
        with caplog.at_level(logging.ERROR, logger="edgekit.serve"):
            status, err = c.json("GET", "/v2/models/digits-split0")
        c.close()
    assert status == 500
    assert "secret" not in err["error"] and "RuntimeError" not in err["error"]
    ref = err["error"].split("reference ")[1].split()[0]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)  # in the log


# -- auth --------------------------------------------------------------------------------


def test_only_the_exact_liveness_route_skips_the_token(digits_pkg: Path) -> None:
    with Server(digits_pkg, ServeConfig(port=0, token=TOKEN)) as srv:
        anon = Client(srv.url)
        assert anon.json("GET", "/v2/health/live") == (200, {"live": True})
        for path in (
            "/v2/health/live/",
            "//v2/health/live",
            "/v2/models/digits-split0/health/live",
            "/v2/models/stats/health/live",
            "/anything/health/live",
            "/v2/health/ready",
        ):
            status, err = anon.json("GET", path)
            assert status == 401, path
            assert "no Authorization header" in err["error"]
        good = Client(srv.url, token=TOKEN)
        assert good.json("GET", "/v2/health/live/") == (200, {"live": True})
        anon.close()
        good.close()


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"token": None, "token_file": None, **kw})


def test_the_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgekit.serve._cli import _token

    monkeypatch.delenv("EDGEKIT_SERVE_TOKEN", raising=False)
    monkeypatch.setenv("EDGEKIT_TOKEN", "from-env")
    assert _token(_args()) == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    f.chmod(0o600)
    assert _token(_args(token_file=str(f))) == "from-file"
    assert capsys.readouterr().err == ""
    f.chmod(0o644)
    assert _token(_args(token_file=str(f))) == "from-file"
    assert "readable by others" in capsys.readouterr().err
    assert _token(_args(token="on-the-command-line")) == "on-the-command-line"
    assert "visible to every user in ps" in capsys.readouterr().err
    big = tmp_path / "big"
    big.write_bytes(b"x" * 10_000)
    with pytest.raises(ServeError, match="longer than 4096 bytes"):
        _token(_args(token_file=str(big)))


def test_a_token_over_plain_http_on_a_public_address_is_warned_about(
    digits_pkg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgekit.serve._server import security_warnings

    assert security_warnings(ServeConfig(token=TOKEN)) == []  # loopback
    assert security_warnings(ServeConfig(host="::1", token=TOKEN)) == []
    (w,) = security_warnings(ServeConfig(host="0.0.0.0", token=TOKEN))
    assert "clear text" in w and "--tls-cert" in w
    (w,) = security_warnings(ServeConfig(host="10.1.2.3"))
    assert "give it a token" in w
    with (
        caplog.at_level(logging.WARNING, logger="edgekit.serve"),
        Server(digits_pkg, ServeConfig(host="0.0.0.0", port=0, token=TOKEN)),
    ):
        pass
    assert any("clear text" in r.getMessage() for r in caplog.records)


# -- config values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_body_mb", math.nan, "--max-body-mb must be a finite number"),
        ("max_body_mb", math.inf, "--max-body-mb must be a finite number"),
        ("max_body_mb", 0.0, "--max-body-mb must be between"),
        ("max_delay_ms", math.nan, "--max-delay-ms must be a finite number"),
        ("max_delay_ms", -1.0, "--max-delay-ms must be between"),
        ("header_timeout_s", math.inf, "--header-timeout must be a finite number"),
        ("body_timeout_s", 0.0, "--body-timeout must be between"),
        ("keep_alive_s", math.nan, "keep_alive_s must be a finite number"),
        ("max_rows", 0, "--max-rows must be in 1.."),
        ("max_connections", 0, "--max-connections must be in 1.."),
        ("max_batch", True, "--max-batch must be an integer"),
        ("threads", 0, "--threads must be in 1.."),
        ("workers", 1.5, "--workers must be an integer"),
        ("replicas", 10**9, "--replicas must be in 1..4096"),
        ("port", "80", "--port must be an integer"),
    ],
)
def test_config_values_are_checked_at_start(field: str, value: object, message: str) -> None:
    with pytest.raises(ServeError, match=message.replace(".", r"\.")):
        ServeConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [
        ["--max-body-mb", "nan"],
        ["--max-body-mb", "inf"],
        ["--max-delay-ms", "inf"],
        ["--body-timeout", "nan"],
        ["--max-rows", "-3"],
    ],
)
def test_cli_refuses_bad_numbers_before_loading(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgekit.cli import main

    assert main(["serve", str(tmp_path / "never-read.edgepkg"), *args]) == 2
    err = capsys.readouterr().err
    assert args[0] in err and "must be" in err


# -- a bounded fuzz of the running server --------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture()
def served(digits_pkg: Path) -> Iterator[tuple[str, int]]:
    """``edgekit serve`` in its own process (so its memory can be watched): (url, pid)."""
    cmd = [sys.executable, "-m", "edgekit", "serve", str(digits_pkg), "--port", "0"]
    cmd += ["--max-body-mb", "1", "--max-rows", "64"]
    env = {**os.environ, "EDGEKIT_TOKEN": TOKEN}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    err = LineReader(proc.stderr)  # drained all along: the server never blocks on its log
    try:
        line = err.wait_for_line("serving digits on", 60)
        assert line is not None, err.tail()
        yield line.split(" on ", 1)[1].split("/v2", 1)[0], proc.pid
    finally:
        stop_process(proc)


def _seeds(local: Local, images: np.ndarray) -> list[tuple[str, bytes, dict[str, str]]]:
    """Valid requests of every kind the server takes: the fuzz mutates these."""
    out = []
    for split in range(len(local.m.stages)):
        for kw in ({}, {"binary": False}, {"compress": "gzip"}, {"compress": "deflate"}):
            body, headers = _split_request(local, images[:2], split, **kw)
            out.append((f"/v2/models/digits-split{split}/infer", body, headers))
    body, headers = _split_request(local, images[:1], 0, split=0)
    out.append(("/v2/models/digits/infer", body, headers))
    x = local.features(images[:1], 2)
    body, headers = encode_infer_request({"input": x}, binary=True, outputs=["confidence"])
    out.append(("/v2/models/digits-split2/versions/1/infer", body, headers))
    return out


_PATHS = [
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/stats",
    "/v2/models/digits-split0",
    "/v2/models/digits-split9/infer",
    "/v2/models/digits-split1/versions/2/infer",
    "/v2/models/../../etc/passwd",
    "/v2/models/%00/infer",
    "/v2/models/digits-split1/ready",
]


def _mutate(rng: random.Random, seed: tuple[str, bytes, dict[str, str]]) -> tuple[Any, ...]:
    path, body, headers = seed
    headers = {k: v for k, v in headers.items() if k != "Content-Length"}  # http.client's
    body = bytearray(body)
    method = "POST"
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        if op == 0 and body:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        elif op == 1:  # truncate or extend
            body = body[: rng.randrange(len(body) + 1)] + bytes(rng.randrange(3) * 7)
        elif op == 2:
            headers[HEADER_LENGTH] = rng.choice(
                ["0", "-1", "abc", str(len(body)), str(rng.randrange(1 << 40)), "9" * 5000]
            )
        elif op == 3:
            headers["Content-Encoding"] = rng.choice(
                ["gzip", "deflate", "br", "gzip, gzip", "identity", "x-gzip", "gzip," * 50]
            )
        elif op == 4:
            path = rng.choice(_PATHS)
        elif op == 5:
            method = rng.choice(["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
        elif op == 6:  # a JSON edit in the header part
            head = bytes(body).split(b"}", 1)[0]
            for a, b in (
                (b'"INT8"', b'"FP64"'),
                (b"[2,", b"[99999,"),
                (b'"scale":', b'"scale":1e400,"x":'),
            ):
                head = head.replace(a, b)
            body = bytearray(head) + body[len(head) :]
        elif op == 7:
            headers.pop(HEADER_LENGTH, None)
        else:
            headers["Accept-Encoding"] = rng.choice(["gzip", "deflate;q=nan", "*", "br;q=1e999"])
    return method, path, bytes(body), headers


def test_fuzzing_the_running_server_gives_no_5xx_and_flat_memory(
    served: tuple[str, int], local: Local, images: np.ndarray
) -> None:
    url, pid = served
    rng = random.Random(1234)
    seeds = _seeds(local, images)
    host, port = _host_port(url)
    statuses: Counter[int] = Counter()
    fivexx: list[tuple[Any, ...]] = []

    def run(n: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        for _ in range(n):
            method, path, body, headers = _mutate(rng, rng.choice(seeds))
            if rng.random() < 0.95:
                headers["Authorization"] = f"Bearer {TOKEN}"
            try:
                conn.request(method, path, body if method != "GET" else None, headers)
                r = conn.getresponse()
                r.read()
            except TimeoutError as exc:  # a hung server is a failure, not a parse error
                raise AssertionError(f"no answer within 10 s: {method} {path}") from exc
            except (OSError, http.client.HTTPException):
                conn.close()  # the server closed a connection it could not parse: fine
                conn = http.client.HTTPConnection(host, port, timeout=10)
                continue
            statuses[r.status] += 1
            if r.status >= 500:
                fivexx.append((method, path, headers, body[:200], r.status))
        conn.close()

    run(300)  # warm-up: the allocator and the interpreters reach their steady state
    before = _rss_kib(pid)
    t0 = time.monotonic()
    run(3000)
    took = time.monotonic() - t0
    after = _rss_kib(pid)
    print(
        f"fuzz: 3000 mutated requests in {took:.1f} s; statuses {dict(statuses)}; "
        f"server RSS {before} -> {after} KiB"
    )
    assert not fivexx, fivexx[:5]
    assert sum(statuses.values()) > 3000  # nearly every request got an answer
    assert 200 in statuses and 400 in statuses and 401 in statuses
    assert after - before < 30 << 10, (before, after)


# -- the decoder's worker processes -------------------------------------------------------


def test_large_requests_decode_in_workers_like_small_ones_and_a_dead_worker_is_replaced() -> None:
    import asyncio
    import signal

    from edgekit._kserve import ProtocolError
    from edgekit.serve._decode import Decoder

    x = np.arange(4 * 70_000, dtype=np.int64).astype(np.int8).reshape(4, 70_000)
    body, headers = encode_split_request(x, scale=0.5, zero_point=0, compress="gzip")
    hdrs = {k.lower(): v for k, v in headers.items()}
    dec = Decoder(limit=1 << 20, max_rows=8, inline=1024)
    try:
        req = asyncio.run(dec.decode(body, hdrs))  # inflates beyond `inline`: a worker
        np.testing.assert_array_equal(req.input("input").data, x)
        small = Decoder(limit=1 << 20, max_rows=8)
        try:
            same = asyncio.run(small.decode(body, hdrs))  # decoded in place
        finally:
            small.close()
        np.testing.assert_array_equal(same.input("input").data, x)
        bad, bad_headers = encode_split_request(x[:1].repeat(9, 0), scale=0.5, zero_point=0)
        with pytest.raises(ProtocolError, match="9 rows; this server takes at most 8") as e:
            asyncio.run(dec.decode(bad, {k.lower(): v for k, v in bad_headers.items()}))
        assert e.value.status == 413
        pool = dec._pool
        assert pool is not None
        for pid in list(pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProtocolError) as e:
            asyncio.run(dec.decode(body, hdrs))
        assert e.value.status == 503
        req = asyncio.run(dec.decode(body, hdrs))  # a fresh pool
        np.testing.assert_array_equal(req.input("input").data, x)
    finally:
        dec.close()


def test_decoder_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from edgekit.serve._decode import Decoder\n"
        "d = Decoder(limit=1024, max_rows=1)\n"
        "print(*d._pool._processes, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    ).stdout
    pids = [int(p) for p in out.split()]
    assert pids
    alive = lambda: [p for p in pids if Path(f"/proc/{p}").exists()]  # noqa: E731
    wait_for(lambda: not alive(), 10, f"the orphaned decoder workers {alive()} to exit")
