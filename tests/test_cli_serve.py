"""``edgekit serve`` as a user types it: the token from the environment, ``--backend litert``,
and a ``--token-file`` that cannot be used (issue 15, "what users run is what is tested")."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _wait import stop_process

pytest.importorskip("uvicorn")

TOKEN = "env-token-7f3a"


def _serve_cmd(pkg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edgekit", "serve", str(pkg), "--port", "0", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_TOKEN", "EDGEKIT_SERVE_TOKEN")}
    env.update(extra)
    return env


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _startup_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The server's 'serving ... on URL' line from its stderr, read with a deadline."""
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: Any) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, args=(proc.stderr,), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if "serving " in line and " on http" in line:
            return line
    raise AssertionError("no startup line within the deadline:\n" + "".join(seen))


@pytest.mark.slow
def test_serve_takes_the_token_from_the_environment_and_runs_litert(digits_pkg: Path) -> None:
    """EDGEKIT_TOKEN, no --token/--token-file: auth is on with that token; --backend litert
    is the backend the models report."""
    pytest.importorskip("ai_edge_litert")
    proc = subprocess.Popen(
        _serve_cmd(digits_pkg, "--backend", "litert"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(EDGEKIT_TOKEN=TOKEN),
    )
    try:
        line = _startup_line(proc, 90)
        assert "auth: bearer token" in line and "TLS: off" in line
        url = line.split(" on ", 1)[1].split("/v2", 1)[0]
        status, err = _get(f"{url}/v2")
        assert status == 401 and "no Authorization header" in err["error"]
        status, err = _get(f"{url}/v2", token="not-the-env-token")
        assert status == 401 and "wrong bearer token" in err["error"]
        status, meta = _get(f"{url}/v2/models/digits-split1", token=TOKEN)
        assert status == 200, meta
        assert meta["platform"] == "edgekit_litert"
        assert meta["parameters"]["backend"] == "litert"
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_serve_without_any_token_says_auth_is_off(digits_pkg: Path) -> None:
    """The same command without EDGEKIT_TOKEN: the startup line says auth is off and an
    anonymous request is answered (so the first test's 401 came from the environment)."""
    proc = subprocess.Popen(
        _serve_cmd(digits_pkg),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = _startup_line(proc, 90)
        assert "auth: OFF" in line
        url = line.split(" on ", 1)[1].split("/v2", 1)[0]
        status, meta = _get(f"{url}/v2")
        assert status == 200 and meta["name"] == "edgekit"
    finally:
        stop_process(proc)


def _bad_token_file(kind: str, d: Path) -> Path:
    if kind == "missing":
        return d / "no-such-token"
    if kind == "folder":
        return d
    path = d / kind
    path.write_bytes(b"\n" if kind == "empty" else b"\xff\xfe\x00")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "cannot read --token-file"),
        ("folder", "cannot read --token-file"),
        ("empty", "is empty"),
        ("not-text", "cannot read --token-file"),
    ],
)
def test_a_bad_token_file_is_one_clear_error(kind: str, message: str, tmp_path: Path) -> None:
    """A --token-file that cannot be used: exit 2, one 'edgekit: error:' line naming the
    file, no traceback, and no server started. The token is read before the package (which
    does not exist here), so the error is the token file's."""
    path = _bad_token_file(kind, tmp_path)
    res = subprocess.run(
        _serve_cmd(tmp_path / "never-read.edgepkg", "--token-file", str(path)),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(EDGEKIT_TOKEN=TOKEN),  # a bad file is an error even with a token in the env
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith("edgekit: error: ") and message in first and str(path) in first
    assert "serving" not in res.stderr
