"""The smart camera on the virtual arm64 Raspberry Pi: pushed package and runtime, the app
copied over SSH, run on test://fashion-mnist, and the host reading its /api/stats over the
device's network link."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgekit.data import FASHION_MNIST_DIR
from edgekit.devices import Connection, PushOptions, RunResult, VirtualDevice, push, run

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = "/opt/edgekit-apps"
PORT = 8090


def _copy_app(conn: Connection) -> None:
    conn.run(f"mkdir -p {APP_DIR}/apps/smart_camera {APP_DIR}/data")
    for f in sorted((ROOT / "apps" / "smart_camera").iterdir()):
        if f.suffix in (".py", ".html"):
            conn.put(f, f"{APP_DIR}/apps/smart_camera/{f.name}")
    for stem in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        conn.put(Path(FASHION_MNIST_DIR) / stem, f"{APP_DIR}/data/{stem}")


def _stats(host: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{PORT}/api/stats", timeout=5) as r:
            return dict(json.load(r))
    except OSError:
        return None


@pytest.fixture(scope="module")
def pkg(fmnist_fast_pkg: Path) -> Path:
    return fmnist_fast_pkg


def test_camera_app_on_the_virtual_pi(
    ssh_config_file: Path, virtual_device: VirtualDevice, pkg: Path
) -> None:
    if not (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    opts = PushOptions(ssh_config=str(ssh_config_file), verbose=False)
    res = push(pkg, ["pi0"], opts)["pi0"]
    assert res.ok, res.error
    with Connection("pi0", ssh_config=ssh_config_file) as conn:
        _copy_app(conn)
    cmd = (
        f"cd {APP_DIR} && EDGEKIT_FASHION_MNIST={APP_DIR}/data python -m apps.smart_camera "
        f'"$EDGEKIT_PACKAGE" --source test://fashion-mnist --loop --fps 10 --frames 250 '
        f"--host 0.0.0.0 --port {PORT} --log {APP_DIR}/camera.jsonl"
    )
    done: list[RunResult] = []
    t = threading.Thread(
        target=lambda: done.append(run("pi0", cmd, options=opts, stream=False, timeout=900)),
        daemon=True,
    )
    t.start()
    host = virtual_device.host
    deadline = time.monotonic() + 600
    stats = None
    while time.monotonic() < deadline and not done:
        stats = _stats(host)
        if stats is not None and stats["results"] >= 20:
            break
        time.sleep(1.0)
    assert stats is not None and stats["results"] >= 20, (stats, done)
    assert stats["source"] == "test://fashion-mnist" and stats["running"] is True
    assert stats["model"]["backend"] == "litert" and stats["model"]["policy"].startswith("bandit")
    assert sum(v for k, v in stats["where"].items() if k.startswith("exit")) == stats["classified"]
    t.join(900)
    assert done and done[0].ok, done and (done[0].stdout[-2000:], done[0].stderr[-2000:])
    assert "250 frames" in done[0].stdout
    with Connection("pi0", ssh_config=ssh_config_file) as conn:
        lines = conn.run(f"wc -l < {APP_DIR}/camera.jsonl").stdout.split()
    assert int(lines[0]) == 250
