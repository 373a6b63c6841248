"""``edgekit serve``: a real server on loopback (uvicorn, real ports), real clients
(http.client, tritonclient), compared with the same stages run locally."""

from __future__ import annotations

import datetime
import gzip
import http.client
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _serving import Client, Local, softmax_max
from _wait import LineReader

from edgekit._kserve import (
    HEADER_LENGTH,
    decode_infer_response,
    encode_infer_request,
    encode_split_request,
    package_sha256,
    to_8bit,
)
from edgekit.data import load_digits
from edgekit.serve import ServeConfig, Server

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def local(digits_pkg: Path) -> Local:
    return Local(digits_pkg)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_digits().x_test[:64]


@pytest.fixture(scope="module")
def server(digits_pkg: Path) -> Iterator[Server]:
    with Server(digits_pkg, ServeConfig(port=0, max_body_mb=1.0)) as s:
        yield s


@pytest.fixture()
def client(server: Server) -> Iterator[Client]:
    c = Client(server.url)
    yield c
    c.close()


def _split_body(local: Local, images: np.ndarray, at: int, **kw: Any) -> tuple[bytes, dict]:
    x = local.features(images, at)
    scale, zp = local.input_quant(at)
    return encode_split_request(x, scale=scale, zero_point=zp, **kw)


# -- metadata -----------------------------------------------------------------------------


def test_health_and_metadata(client: Client, local: Local, digits_pkg: Path) -> None:
    assert client.json("GET", "/v2/health/live") == (200, {"live": True})
    assert client.json("GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = client.json("GET", "/v2")
    assert status == 200 and meta["name"] == "edgekit"
    assert "binary_tensor_data" in meta["extensions"] and meta["version"]
    n = len(local.m.stages)
    assert meta["models"] == [f"digits-split{s}" for s in range(n)]
    for s in range(n):
        for path in (f"/v2/models/digits-split{s}", f"/v2/models/digits-split{s}/versions/1"):
            status, md = client.json("GET", path)
            assert status == 200
            assert md["name"] == f"digits-split{s}"
            (inp,) = md["inputs"]
            assert inp["name"] == "input"
            assert inp["datatype"] == local.dtype.name.upper()
            assert inp["shape"] == [-1, *local.m.stages[s].input.shape[1:]]
            assert md["outputs"] == [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            ]
            assert md["parameters"]["package_sha256"] == package_sha256(digits_pkg)
            assert md["parameters"]["input_scale"] == local.input_quant(s)[0]
        assert client.json("GET", f"/v2/models/digits-split{s}/ready") == (
            200,
            {"name": f"digits-split{s}", "ready": True},
        )
    status, err = client.json("GET", "/v2/models/digits-split1/versions/2")
    assert status == 404 and "no version '2'" in err["error"]


# -- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_server_equals_local_stages(
    client: Client, local: Local, images: np.ndarray, split: int
) -> None:
    """Exact logits: the same 8-bit input through the same stages, server vs in-process."""
    x = local.features(images, split)
    scale, zp = local.input_quant(split)
    body, headers = encode_split_request(x, scale=scale, zero_point=zp, request_id=f"r{split}")
    status, hdrs, raw = client.call("POST", f"/v2/models/digits-split{split}/infer", body, headers)
    assert status == 200, raw
    assert HEADER_LENGTH.lower() in hdrs  # binary outputs, as the request asked
    head = json.loads(raw[: int(hdrs[HEADER_LENGTH.lower()])])
    assert head["model_name"] == f"digits-split{split}" and head["id"] == f"r{split}"
    out = decode_infer_response(raw, hdrs)
    want = local.tail(x, split)
    np.testing.assert_array_equal(out["logits"], want)
    assert out["logits"].dtype == np.float32 and out["confidence"].shape == (len(images),)
    np.testing.assert_allclose(out["confidence"], softmax_max(want), rtol=1e-5)


def test_server_answers_like_the_runtime(
    client: Client, digits_pkg: Path, local: Local, images: np.ndarray
) -> None:
    """The last exit's label and confidence equal what edgekit.load computes."""
    import edgekit

    with edgekit.load(digits_pkg, backend="onnxruntime", policy="full") as m:
        labels, confs = m.run_all_exits(images)
    for split in range(4):
        out = client.infer(f"digits-split{split}", *_split_body(local, images, split))
        np.testing.assert_array_equal(out["logits"].argmax(axis=1), labels[:, -1])
        np.testing.assert_allclose(out["confidence"], confs[:, -1], rtol=1e-6)


def test_json_and_binary_forms_agree(client: Client, local: Local, images: np.ndarray) -> None:
    x = local.features(images[:5], 2)
    scale, zp = local.input_quant(2)
    binary = client.infer("digits-split2", *encode_split_request(x, scale=scale, zero_point=zp))
    body, headers = encode_split_request(x, scale=scale, zero_point=zp, binary=False)
    assert HEADER_LENGTH not in headers
    status, hdrs, raw = client.call("POST", "/v2/models/digits-split2/infer", body, headers)
    assert status == 200
    doc = json.loads(raw)  # JSON request without binary outputs asked: all JSON back
    assert HEADER_LENGTH.lower() not in hdrs
    assert {o["name"]: o["datatype"] for o in doc["outputs"]} == {
        "logits": "FP32",
        "confidence": "FP32",
    }
    got = decode_infer_response(raw, hdrs)
    for k in ("logits", "confidence"):
        np.testing.assert_array_equal(got[k], binary[k])
    # a hand-written JSON request (nested data, one output asked for, binary)
    doc_req = {
        "id": "hand",
        "inputs": [
            {
                "name": "input",
                "datatype": local.dtype.name.upper(),
                "shape": list(x.shape),
                "data": x.tolist(),
            }
        ],
        "outputs": [{"name": "confidence", "parameters": {"binary_data": True}}],
    }
    status, hdrs, raw = client.call(
        "POST", "/v2/models/digits-split2/infer", json.dumps(doc_req).encode()
    )
    assert status == 200
    got = decode_infer_response(raw, hdrs)
    assert list(got) == ["confidence"]
    np.testing.assert_array_equal(got["confidence"], binary["confidence"])


def test_int8_and_uint8_requests_agree(client: Client, local: Local, images: np.ndarray) -> None:
    for split in (0, 1):
        x = local.features(images[:8], split)
        answers = []
        for dt in ("int8", "uint8"):
            scale, zp = local.input_quant(split, dt)
            body, headers = encode_split_request(to_8bit(x, dt), scale=scale, zero_point=zp)
            answers.append(client.infer(f"digits-split{split}", body, headers))
        np.testing.assert_array_equal(answers[0]["logits"], answers[1]["logits"])
        np.testing.assert_array_equal(answers[0]["logits"], local.tail(x, split))


@pytest.mark.parametrize("encoding", ["deflate", "gzip"])
def test_compressed_request_and_response(
    client: Client, local: Local, images: np.ndarray, encoding: str
) -> None:
    x = local.features(images[:32], 1)
    scale, zp = local.input_quant(1)
    body, headers = encode_split_request(x, scale=scale, zero_point=zp, compress=encoding)
    assert headers["Content-Encoding"] == encoding
    headers["Accept-Encoding"] = encoding
    status, hdrs, raw = client.call("POST", "/v2/models/digits-split1/infer", body, headers)
    assert status == 200
    assert hdrs.get("content-encoding") == encoding  # 32 rows: worth compressing
    plain = zlib.decompress(raw) if encoding == "deflate" else gzip.decompress(raw)
    assert plain[:1] == b"{"
    out = decode_infer_response(raw, hdrs)
    np.testing.assert_array_equal(out["logits"], local.tail(x, 1))


def test_bare_model_with_split_parameter(client: Client, local: Local, images: np.ndarray) -> None:
    body, headers = _split_body(local, images[:4], 2, split=2)
    out = client.infer("digits", body, headers)
    np.testing.assert_array_equal(out["logits"], local.tail(local.features(images[:4], 2), 2))
    status, md = client.json("GET", "/v2/models/digits")
    assert status == 200 and "split" in md["parameters"]


def test_package_sha256_checked(
    client: Client, local: Local, images: np.ndarray, digits_pkg: Path
) -> None:
    ok = client.infer(
        "digits-split1",
        *_split_body(local, images[:2], 1, package_sha256=package_sha256(digits_pkg)),
    )
    assert ok["logits"].shape == (2, 10)
    body, headers = _split_body(local, images[:2], 1, package_sha256="0" * 64)
    status, err = client.json("POST", "/v2/models/digits-split1/infer", body=body, headers=headers)
    assert status == 409 and "package mismatch" in err["error"]


def test_litert_backend(digits_pkg: Path, local: Local, images: np.ndarray) -> None:
    """TFLite stages resize to the batch; int8 interpreters take uint8 requests too."""
    pytest.importorskip("ai_edge_litert")
    lite = Local(digits_pkg, "litert")
    assert lite.dtype == np.int8
    with Server(digits_pkg, ServeConfig(port=0, backend="litert", max_delay_ms=0)) as srv:
        c = Client(srv.url)
        try:
            status, md = c.json("GET", "/v2/models/digits-split1")
            assert status == 200 and md["inputs"][0]["datatype"] == "INT8"
            for split in (0, 2):
                x = lite.features(images[:20], split)
                want = lite.tail(x, split)
                for dt in ("int8", "uint8"):  # the device may run ONNX with uint8
                    scale, zp = lite.input_quant(split, dt)
                    body, headers = encode_split_request(to_8bit(x, dt), scale=scale, zero_point=zp)
                    out = c.infer(f"digits-split{split}", body, headers)
                    np.testing.assert_array_equal(out["logits"], want)
            # the ONNX device's features at split 2 give the same labels through TFLite
            x = local.features(images, 2)
            s2, z2 = local.input_quant(2)
            out = c.infer("digits-split2", *encode_split_request(x, scale=s2, zero_point=z2))
            agree = np.mean(out["logits"].argmax(1) == local.tail(x, 2).argmax(1))
            assert agree >= 0.95
        finally:
            c.close()


# -- bad requests -------------------------------------------------------------------------


def _bad_cases(local: Local, images: np.ndarray) -> list[tuple[str, str, bytes, dict, int, str]]:
    x1 = local.features(images[:2], 1)
    s1, z1 = local.input_quant(1)
    dt = local.dtype.name.upper()
    other = "INT8" if dt == "UINT8" else "UINT8"
    infer = "/v2/models/digits-split1/infer"

    def split1(x: np.ndarray = x1, **kw: Any) -> tuple[bytes, dict]:
        kw.setdefault("scale", s1)
        kw.setdefault("zero_point", z1)
        return encode_split_request(x, **kw)

    def doc(**inp: Any) -> tuple[bytes, dict]:
        d = {"name": "input", "datatype": dt, "shape": [1, 8, 8, 32], "data": [0] * 2048}
        d.update(inp)
        return json.dumps({"inputs": [d]}).encode(), {}

    big = zlib.compress(b"\0" * (3 << 20))  # 3 MiB once inflated; the limit is 1 MiB
    good_b, good_h = split1()
    n = int(good_h[HEADER_LENGTH])
    return [
        ("POST", infer, b"{not json", {}, 400, "not valid JSON"),
        ("POST", infer, b"[]", {}, 400, "must be an object"),
        ("POST", infer, *split1(x1[:, :4]), 400, "has shape [2, 4, 8, 32]; split 1 takes"),
        ("POST", infer, *split1(x1.reshape(2, 8, 8, 32, 1)), 400, "has shape"),
        ("POST", infer, *doc(datatype="FP32", data=[0.0] * 2048), 400, "datatype FP32"),
        ("POST", infer, *doc(datatype="INT16"), 400, "datatype INT16"),
        ("POST", infer, *doc(datatype="STRING"), 400, "unsupported datatype"),
        ("POST", infer, *doc(data=[0] * 5), 400, "has 5 values"),
        ("POST", infer, *doc(shape=[1, 8, "8", 32]), 400, "'shape' must be a list"),
        ("POST", "/v2/models/digits-split9/infer", *split1(), 404, "split points are 0..3"),
        ("POST", "/v2/models/resnet/infer", *split1(), 404, "unknown model 'resnet'"),
        ("POST", "/v2/models/digits/infer", *split1(), 400, "needs the request parameter"),
        ("POST", "/v2/models/digits/infer", *split1(split=7), 404, "integer in 0..3"),
        ("POST", infer, *split1(scale=s1 * 1.01), 400, "package versions differ"),
        ("POST", infer, *split1(zero_point=z1 + 1), 400, "package versions differ"),
        ("POST", infer, *split1(to_8bit(x1, other.lower()), zero_point=z1), 400, "versions"),
        ("POST", infer, *doc(parameters={"scale": 0.1}), 400, "go together"),
        ("POST", infer, *doc(parameters={"scale": "x", "zero_point": 0}), 400, "a number"),
        ("POST", infer, *doc(parameters={"scale": 0.1, "zero_point": 1.5}), 400, "an integer"),
        (
            "POST",
            infer,
            *doc(parameters={"scale": s1, "zero_point": 999}),
            400,
            "out of range",
        ),
        ("POST", infer, good_b, {HEADER_LENGTH: "nope"}, 400, "must be an integer"),
        ("POST", infer, good_b, {HEADER_LENGTH: str(n + 9)}, 400, "not valid JSON"),
        ("POST", infer, good_b[:-7], {HEADER_LENGTH: str(n)}, 400, "ends before"),
        ("POST", infer, good_b + b"xx", {HEADER_LENGTH: str(n)}, 400, "2 bytes after"),
        ("POST", infer, good_b, {}, 400, HEADER_LENGTH),
        ("POST", infer, b"\x00" * (2 << 20), {}, 413, "larger than the server's limit"),
        ("POST", infer, big, {"Content-Encoding": "deflate"}, 413, "once decompressed"),
        ("POST", infer, b"garbage", {"Content-Encoding": "deflate"}, 400, "not valid deflate"),
        ("POST", infer, good_b, {**good_h, "Content-Encoding": "br"}, 415, "Content-Encoding"),
        (
            "POST",
            infer,
            *encode_infer_request([]),
            400,
            "non-empty 'inputs'",
        ),
        (
            "POST",
            infer,
            *encode_infer_request({"input": x1, "extra": x1}),
            400,
            "exactly one input",
        ),
        ("POST", infer, *encode_infer_request({"image": x1}), 400, "no input named 'input'"),
        (
            "POST",
            infer,
            *encode_infer_request({"input": x1}, outputs=["probabilities"]),
            400,
            "unknown output 'probabilities'",
        ),
        ("POST", infer, *split1(np.zeros((0, 8, 8, 32), local.dtype)), 400, "batch of 0"),
        ("GET", infer, b"", {}, 405, "GET is not allowed"),
        ("POST", "/v2/models/digits-split1", b"", {}, 405, "not allowed"),
        ("GET", "/v3/models", b"", {}, 404, "under /v2"),
        ("GET", "/v2/models/digits-split1/explain", b"", {}, 404, "no route"),
        ("GET", "/v2/health/sick", b"", {}, 404, "no route"),
    ]


def test_bad_requests_get_4xx_json(server: Server, local: Local, images: np.ndarray) -> None:
    for method, path, body, headers, want, text in _bad_cases(local, images):
        c = Client(server.url)  # a fresh connection: a 413 may close the one it came on
        try:
            status, hdrs, raw = c.call(method, path, body or None, headers)
        finally:
            c.close()
        assert status == want, (path, text, status, raw[:300])
        assert hdrs["content-type"] == "application/json", (text, hdrs)
        err = json.loads(raw)["error"]
        assert text in err, (text, err)
    # the server is unharmed and still exact
    c = Client(server.url)
    x = local.features(images[:3], 1)
    s, z = local.input_quant(1)
    out = c.infer("digits-split1", *encode_split_request(x, scale=s, zero_point=z))
    c.close()
    np.testing.assert_array_equal(out["logits"], local.tail(x, 1))


# -- batching -----------------------------------------------------------------------------


def test_dynamic_batching_joins_concurrent_requests(
    digits_pkg: Path, local: Local, images: np.ndarray
) -> None:
    """32 devices at once: fewer, larger batches, and every device gets its own answer."""
    # A 2 s window for 8 rows: batches fill on a loaded machine too (a full one goes at once).
    cfg = ServeConfig(port=0, max_batch=8, max_delay_ms=2000)
    n = 32
    xs = [local.features(images[i : i + 1], 2) for i in range(n)]
    want = [local.tail(x, 2) for x in xs]
    s2, z2 = local.input_quant(2)
    with Server(digits_pkg, cfg) as srv:
        barrier = threading.Barrier(n)

        def device(i: int) -> np.ndarray:
            c = Client(srv.url)
            body, headers = encode_split_request(xs[i], scale=s2, zero_point=z2)
            barrier.wait()
            try:
                return c.infer("digits-split2", body, headers)["logits"]
            finally:
                c.close()

        with ThreadPoolExecutor(n) as pool:
            got = list(pool.map(device, range(n)))
        c = Client(srv.url)
        status, stats = c.json("GET", "/v2/models/digits-split2/stats")
        c.close()
    assert status == 200
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    (st,) = stats["model_stats"]
    assert st["requests"] == n and st["rows"] == n
    assert st["batches"] <= n // 4, st  # 8 rows per batch at best: 4; allow stragglers
    assert max(int(k) for k in st["batch_sizes"]) == 8
    assert st["inference_count"] == n and st["execution_count"] == st["batches"]


# -- auth, TLS, CLI -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return d / "cert.pem", d / "key.pem"


def test_auth_and_tls(
    digits_pkg: Path, tls_files: tuple[Path, Path], local: Local, images: np.ndarray
) -> None:
    cert, key = tls_files
    cfg = ServeConfig(port=0, token=TOKEN, tls_cert=str(cert), tls_key=str(key))
    ctx = ssl.create_default_context(cafile=str(cert))
    with Server(digits_pkg, cfg) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        anon = Client(srv.url, context=ctx)
        assert anon.json("GET", "/v2/health/live") == (200, {"live": True})  # probes: no token
        body, headers = _split_body(local, images[:2], 1)
        for path, method, b in (
            ("/v2", "GET", None),
            ("/v2/health/ready", "GET", None),
            ("/v2/models/digits-split1", "GET", None),
            ("/v2/models/digits-split1/infer", "POST", body),
        ):
            status, hdrs, raw = anon.call(method, path, b, headers if b else None)
            assert status == 401, path
            assert "no Authorization header" in json.loads(raw)["error"]
            assert hdrs["www-authenticate"].startswith("Bearer")
        wrong = Client(srv.url, token="guess", context=ctx)
        status, err = wrong.json("GET", "/v2")
        assert status == 401 and "wrong bearer token" in err["error"]
        status, hdrs, raw = wrong.call("POST", "/v2/models/digits-split1/infer", body, headers)
        assert status == 401
        good = Client(srv.url, token=TOKEN, context=ctx)
        out = good.infer("digits-split1", body, headers)
        np.testing.assert_array_equal(out["logits"], local.tail(local.features(images[:2], 1), 1))
        # TLS really is on: plain HTTP on the same port gets no answer, and an unknown
        # certificate is refused by a verifying client
        plain = Client(srv.url.replace("https", "http"))
        # (closed or reset, not a timeout: TimeoutError is neither)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.call("GET", "/v2/health/live")
        strict = Client(srv.url, context=ssl.create_default_context())
        with pytest.raises(ssl.SSLError):
            strict.call("GET", "/v2/health/live")
        for c in (anon, wrong, good, plain, strict):
            c.close()


def _read_startup(proc: subprocess.Popen[str], err: LineReader, timeout: float) -> str:
    line = err.wait_for_line("serving digits on", timeout)
    if line is None:
        proc.kill()
        raise AssertionError("no startup line:\n" + err.tail())
    return line


def test_cli_serve_with_token_file_and_tls(
    digits_pkg: Path, tls_files: tuple[Path, Path], tmp_path: Path, local: Local
) -> None:
    """`edgekit serve` as a user runs it: startup line, a request, clean stop on SIGTERM."""
    cert, key = tls_files
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    cmd = [sys.executable, "-m", "edgekit", "serve", str(digits_pkg), "--port", "0"]
    cmd += ["--token-file", str(tok), "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=os.environ.copy()
    )
    assert proc.stderr is not None
    stderr = LineReader(proc.stderr)
    try:
        line = _read_startup(proc, stderr, 60)
        assert "auth: bearer token" in line and "TLS: on" in line and "digits-split3" in line
        url = line.split(" on ", 1)[1].split("/v2", 1)[0]
        c = Client(url, token=TOKEN, context=ssl.create_default_context(cafile=str(cert)))
        status, meta = c.json("GET", "/v2")
        assert status == 200 and meta["name"] == "edgekit"
        c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stderr.join(10)
        err = stderr.tail(1000)
        assert proc.returncode == 0, err
        assert "stopped serving digits" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "c.pem"], "TLS needs both"),
        (["--max-batch", "0"], "--max-batch must be in 1..65536, got 0"),
        (["--backend", "litert", "--engine", "builtin", "--port", "-1"], "--port must be"),
    ],
)
def test_cli_refuses_bad_options(
    digits_pkg: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgekit.cli import main

    assert main(["serve", str(digits_pkg), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_missing_package_and_a_busy_port(
    digits_pkg: Path, server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgekit.cli import main

    assert main(["serve", str(tmp_path / "nope.edgepkg")]) == 2
    assert "is not an edge package folder" in capsys.readouterr().err
    port = server.url.rsplit(":", 1)[1]
    assert main(["serve", str(digits_pkg), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "hint:" in err


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, digits_pkg: Path) -> None:
    from edgekit import MissingExtraError
    from edgekit.serve._server import _make_uvicorn

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(MissingExtraError, match="uvicorn") as e:
        _make_uvicorn(None, ServeConfig(), lambda: None)  # type: ignore[arg-type]
    assert "edgekit[serve]" in (e.value.hint or "")


# -- third-party client -------------------------------------------------------------------


def test_tritonclient_metadata_and_binary_inference(
    server: Server, local: Local, images: np.ndarray
) -> None:
    """The official Triton HTTP client, as a third party would use it."""
    httpclient = pytest.importorskip("tritonclient.http")
    url = server.url.split("://", 1)[1]
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "edgekit"
        assert client.is_model_ready("digits-split1")
        md = client.get_model_metadata("digits-split1")
        (inp,) = md["inputs"]
        x = local.features(images[:6], 1)
        assert inp["shape"] == [-1, *x.shape[1:]] and inp["datatype"] == "UINT8"
        want = local.tail(x, 1)
        for compression in (None, "deflate", "gzip"):
            ii = httpclient.InferInput("input", list(x.shape), inp["datatype"])
            ii.set_data_from_numpy(to_8bit(x, "uint8"), binary_data=True)
            outs = [
                httpclient.InferRequestedOutput("logits", binary_data=True),
                httpclient.InferRequestedOutput("confidence", binary_data=True),
            ]
            res = client.infer(
                "digits-split1",
                [ii],
                outputs=outs,
                request_id="triton-1",
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
            )
            np.testing.assert_array_equal(res.as_numpy("logits"), want)
            np.testing.assert_allclose(res.as_numpy("confidence"), softmax_max(want), rtol=1e-5)
            assert res.get_response()["id"] == "triton-1"
        # JSON tensors too, and the versioned route
        ii = httpclient.InferInput("input", list(x.shape), "UINT8")
        ii.set_data_from_numpy(to_8bit(x, "uint8"), binary_data=False)
        res = client.infer("digits-split1", [ii], model_version="1")
        np.testing.assert_array_equal(res.as_numpy("logits"), want)
        # errors surface as the client's exception with our message
        bad = httpclient.InferInput("input", [1, 3], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 3), np.uint8))
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="split 1 takes"):
            client.infer("digits-split1", [bad])
        stats = client.get_inference_statistics("digits-split1")
        assert stats["model_stats"][0]["inference_count"] >= 24
    finally:
        client.close()


# -- Triton export ------------------------------------------------------------------------


def test_export_triton_repository(
    digits_pkg: Path, tmp_path: Path, local: Local, images: np.ndarray
) -> None:
    import onnxruntime as ort
    from google.protobuf import text_format

    from edgekit.cli import main

    out = tmp_path / "repo"
    assert main(["export", "triton", str(digits_pkg), "--out", str(out)]) == 0
    assert main(["export", "triton", str(digits_pkg), "--out", str(out)]) == 2  # exists
    assert main(["export", "triton", str(digits_pkg), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"digits-split{s}" for s in range(4)]
    # Triton's own schema must parse every config: missing, this is a visible skip
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from edgekit.runtime.backends.onnxruntime import session_options

    q = local.m.stages[-1].logits.quant
    assert q is not None
    step = q.scale
    for s in range(4):
        d = out / f"digits-split{s}"
        text = (d / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" in text
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert cfg.name == d.name and cfg.max_batch_size == 32
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
        assert cfg.optimization.graph.level == -1
        (ci,) = cfg.input
        names = {o.name: list(o.dims) for o in cfg.output}
        assert names == {"logits": [10], "confidence": [1]}
        in_dims = list(ci.dims)
        in_type = model_config_pb2.DataType.Name(ci.data_type)
        model = str(d / "1" / "model.onnx")
        x = local.features(images, s)
        want = local.tail(x, s)
        # with edgekit's session options: exactly what the server answers
        sess = ort.InferenceSession(model, session_options(1))
        (si,) = sess.get_inputs()
        assert si.name == "input" and si.shape[1:] == in_dims
        assert si.type == f"tensor({in_type[5:].lower()})"
        assert [o.name for o in sess.get_outputs()] == ["logits", "confidence"]
        logits, conf = sess.run(None, {"input": x})
        np.testing.assert_array_equal(logits, want)
        np.testing.assert_allclose(conf, softmax_max(logits), rtol=1e-5)
        assert conf.shape == (len(images),)
        # as Triton runs it (graph level -1 = basic): within one quantization step
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        logits, _ = ort.InferenceSession(model, opts).run(None, {"input": x})
        assert np.abs(logits - want).max() <= 1.001 * step
        assert np.mean(logits.argmax(1) == want.argmax(1)) >= 0.98


def test_batcher_close_fails_queued_requests_and_refuses_new_ones() -> None:
    """Shutdown: what is queued gets Closed (a 503), never a hang; new work is refused."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor as Pool

    from edgekit.serve._batcher import Batcher, Closed

    gate, running = threading.Event(), threading.Event()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        running.set()
        gate.wait(5)
        return x.astype(np.float32), x[:, 0].astype(np.float32)

    async def until(cond: Any, what: str) -> None:
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    async def main() -> list[object]:
        with Pool(1) as pool:
            b = Batcher(run, max_batch=2, max_delay=0.0, executor=pool)
            tasks = [asyncio.create_task(b.submit(np.full((1, 3), i))) for i in range(5)]
            await until(running.is_set, "the first batch to run")  # the rest are queued
            closing = asyncio.create_task(b.close())
            await until(lambda: all(t.done() for t in tasks[2:]), "close() to fail the queue")
            gate.set()
            await closing
            with pytest.raises(Closed):
                await b.submit(np.zeros((1, 3)))
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Closed) for r in results[2:]), results
