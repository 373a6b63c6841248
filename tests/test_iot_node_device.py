"""The IoT node on the virtual Raspberry Pi: ``edgekit push`` the package, install the app
with its one command, start the node there, drop images into its inbox over SSH, and receive
the events on the host's broker (the device reaches the host over its veth)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _mqtt import Broker, Recorder, have_mosquitto, wait_for
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
INBOX = "/var/lib/edgekit-iot-node/inbox"

pytestmark = pytest.mark.slow
if not have_mosquitto():
    pytest.skip("mosquitto is not installed", allow_module_level=True)
pytest.importorskip("paho.mqtt.client")


def ssh(cfg: Path, command: str, stdin: bytes | None = None, timeout: float = 120) -> str:
    r = subprocess.run(
        ["ssh", "-F", str(cfg), "pi0", command],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r.stdout.decode()


@pytest.fixture
def device_broker(virtual_device: object, tmp_path: Path) -> Iterator[Broker]:
    host = getattr(virtual_device, "host_address", None)
    if not host:
        pytest.skip("the session's virtual device shares the host's loopback")
    b = Broker(tmp_path / "mosquitto", host=host).start()
    yield b
    b.remove()


def test_node_on_the_virtual_pi(
    ssh_config_file: Path, digits_pkg: Path, device_broker: Broker, tmp_path: Path
) -> None:
    push = subprocess.run(
        [sys.executable, "-m", "edgekit", "push", str(digits_pkg), "pi0",
         "--ssh-config", str(ssh_config_file), "--quiet"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert push.returncode == 0, push.stderr[-3000:]
    inst = subprocess.run(
        [str(ROOT / "apps" / "iot_node" / "install.sh"), "pi0", "-F", str(ssh_config_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-3000:]
    assert "run.sh" in inst.stdout  # no systemd on the virtual Pi: it says how to start

    host, port = device_broker.host, device_broker.port
    rec = Recorder(port, ["edgekit/pi0/#"], "rec-pi0", host=host)
    try:
        # The one command that starts it there (detached, logging to a file).
        ssh(
            ssh_config_file,
            "setsid sh /opt/edgekit/apps/iot_node/run.sh --config /etc/edgekit/iot-node.toml "
            f"--package /opt/edgekit/digits/current --device pi0 --broker {host} --port {port} "
            "--stats-s 2 </dev/null >/var/log/edgekit-iot-node.log 2>&1 & echo $! >/run/iot.pid",
        )
        log = "ssh pi0 cat /var/log/edgekit-iot-node.log"
        wait_for(lambda: [m for m in rec.raw("/status") if m.payload == b"online"], 180, log)

        import edgekit

        ds = edgekit.load_dataset("digits")
        buf = io.BytesIO()
        names = []
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(12):
                img = Image.fromarray((ds.x_test[i, ..., 0] * 255).round().astype(np.uint8))
                png = io.BytesIO()
                img.save(png, format="PNG")
                info = tarfile.TarInfo(f"pi{i:02d}.png")
                info.size = len(png.getvalue())
                tar.addfile(info, io.BytesIO(png.getvalue()))
                names.append(info.name)
        # Unpacked beside the inbox, then renamed in: the node never sees a half file.
        ssh(
            ssh_config_file,
            f"mkdir -p {INBOX}/.up && tar -xf - -C {INBOX}/.up && mv {INBOX}/.up/*.png {INBOX}/",
            stdin=buf.getvalue(),
        )
        want = {f"inbox:{n}" for n in names}
        wait_for(lambda: want <= {e["source"] for e in rec.on("/events")}, 180, "the events")
        events = [e for e in rec.on("/events") if e["source"] in want]
        assert len({e["event_id"] for e in events}) == len(want)
        assert all(e["ok"] and e["device"] == "pi0" and e["package"] == "digits" for e in events)
        with edgekit.load(digits_pkg, policy="full") as m:
            host_labels = [m.predict(ds.x_test[i]).label for i in range(12)]
        full = [e for e in events if e["exit"] == len(m.manifest.stages) - 1]
        by_name = {e["source"]: e["label"] for e in full}
        for i, n in enumerate(names):  # where the device ran the whole model, same answer
            if f"inbox:{n}" in by_name:
                assert by_name[f"inbox:{n}"] == host_labels[i]
        done = ssh(ssh_config_file, f"ls {INBOX}/done").split()
        assert sorted(done) == sorted(names)
        ssh(ssh_config_file, "kill -TERM $(cat /run/iot.pid)")
        wait_for(lambda: rec.raw("/status")[-1].payload == b"offline", 60, "offline")
    finally:
        subprocess.run(
            [
                "ssh",
                "-F",
                str(ssh_config_file),
                "pi0",
                "kill $(cat /run/iot.pid) 2>/dev/null; true",
            ],
            capture_output=True,
            timeout=60,
        )
        rec.close()
