"""``edgekit serve --engine ray``: the same handler as a Ray Serve deployment, on a local
Ray cluster started by the command (once for the module: tens of seconds on 2 cores)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _serving import Client, Local, softmax_max
from _wait import LineReader

from edgekit._kserve import HEADER_LENGTH, encode_split_request, package_sha256
from edgekit.data import load_digits

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'edgekit[ray]')")
pytestmark = pytest.mark.slow

TOKEN = "ray-token"


@pytest.fixture(scope="module")
def ray_server(digits_pkg: Path) -> Iterator[str]:
    """`edgekit serve --engine ray` as a user starts it: a local Ray cluster, one replica.

    Yields the server's URL; SIGTERM at the end must stop Serve and Ray cleanly.
    """
    cmd = [sys.executable, "-m", "edgekit", "serve", str(digits_pkg), "--engine", "ray"]
    # A 4-row batch waits up to 300 ms for its rows: concurrent requests join one batch even
    # on a loaded machine; a lone request pays the 300 ms.
    cmd += ["--replicas", "1", "--port", "0", "--token", TOKEN]
    cmd += ["--max-batch", "4", "--max-delay-ms", "300"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    err = LineReader(proc.stderr)  # drained all along, with a deadline on the startup line
    line = err.wait_for_line("serving digits on", 240)
    if line is None:
        proc.kill()
        proc.wait(60)
        pytest.fail("edgekit serve --engine ray did not start:\n" + err.tail())
    assert "Ray Serve, 1 replica(s)" in line and "auth: bearer token" in line
    url = line.split(" on ", 1)[1].split("/v2", 1)[0]
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
            pytest.fail("the Ray server did not stop on SIGTERM")
        err.join(10)
        assert proc.returncode == 0, err.tail()
        assert err.wait_for_line("stopped serving", 0) is not None, err.tail()


@pytest.fixture(scope="module")
def local(digits_pkg: Path) -> Local:
    return Local(digits_pkg)


def test_ray_replica_answers_like_the_builtin_server(
    ray_server: str, local: Local, digits_pkg: Path
) -> None:
    url = ray_server
    c = Client(url, token=TOKEN)
    try:
        status, meta = c.json("GET", "/v2")
        assert status == 200 and meta["name"] == "edgekit"
        status, md = c.json("GET", "/v2/models/digits-split1/versions/1")
        assert status == 200 and md["inputs"][0]["shape"] == [-1, 8, 8, 32]
        assert md["parameters"]["package_sha256"] == package_sha256(digits_pkg)
        images = load_digits().x_test[:40]
        for split in (0, 2):
            x = local.features(images, split)
            scale, zp = local.input_quant(split)
            body, headers = encode_split_request(
                x, scale=scale, zero_point=zp, package_sha256=package_sha256(digits_pkg)
            )
            out = c.infer(f"digits-split{split}", body, headers)
            want = local.tail(x, split)
            np.testing.assert_array_equal(out["logits"], want)  # exact, as the builtin engine
            np.testing.assert_allclose(out["confidence"], softmax_max(want), rtol=1e-5)
        # a bad request is still a 4xx JSON error through Ray's proxy
        status, _, raw = c.call("POST", "/v2/models/digits-split1/infer", b'{"inputs": 3}', {})
        assert status == 400 and "non-empty 'inputs'" in json.loads(raw)["error"]
        status, _hdrs, raw = c.call(
            "POST", "/v2/models/digits-split1/infer", b"{}", {HEADER_LENGTH: "99"}
        )
        assert status == 400 and HEADER_LENGTH in json.loads(raw)["error"]
    finally:
        c.close()


def test_ray_refuses_without_token_and_batches(ray_server: str, local: Local) -> None:
    url = ray_server
    anon = Client(url)
    status, _hdrs, raw = anon.call("GET", "/v2/models/digits-split1")
    anon.close()
    assert status == 401 and "Authorization" in json.loads(raw)["error"]
    images = load_digits().x_test[:24]
    xs = [local.features(images[i : i + 1], 3) for i in range(24)]
    scale, zp = local.input_quant(3)

    def device(i: int) -> np.ndarray:
        c = Client(url, token=TOKEN)
        try:
            body, headers = encode_split_request(xs[i], scale=scale, zero_point=zp)
            return c.infer("digits-split3", body, headers)["logits"]
        finally:
            c.close()

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(device, range(24)))
    for g, x in zip(got, xs):
        np.testing.assert_array_equal(g, local.tail(x, 3))
    c = Client(url, token=TOKEN)
    status, stats = c.json("GET", "/v2/models/digits-split3/stats")
    c.close()
    (st,) = stats["model_stats"]
    assert status == 200 and st["requests"] == 24 and st["rows"] == 24
    # batched: requests ran together (batches of up to 4 rows), not one by one
    sizes = {int(k): v for k, v in st["batch_sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == 24 and st["batches"] == sum(sizes.values())
    assert max(sizes) > 1 and st["batches"] < 24, st
