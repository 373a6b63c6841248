"""``python -m apps.iot_node.demo PKG``: the node for a few seconds against a local Mosquitto.

Starts ``/usr/sbin/mosquitto`` on a free loopback port, the node on ``PKG``, drops a few test
images into its inbox, prints the events (and the stats) a subscriber receives, then stops
both with SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

import edgekit

MOSQUITTO = "/usr/sbin/mosquitto"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the IoT node briefly and print its events.")
    p.add_argument("package")
    p.add_argument("--dataset", default="fashion-mnist", help="where the test images come from")
    p.add_argument("-n", type=int, default=8, help="images to drop")
    args = p.parse_args(argv)
    if not os.path.exists(MOSQUITTO):
        print("iot demo: mosquitto is missing (apt-get install mosquitto)", file=sys.stderr)
        return 2
    ds = edgekit.load_dataset(args.dataset)
    work = Path(tempfile.mkdtemp(prefix="edgekit-iot-demo-"))
    os.chmod(work, 0o755)
    port = _port()
    (work / "data").mkdir()
    if os.geteuid() == 0:  # mosquitto drops to its own user, which must write its data
        pw = pwd.getpwnam("mosquitto")
        os.chown(work / "data", pw.pw_uid, pw.pw_gid)
    (work / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {work}/data/\nlog_type error\n"
    )
    broker = subprocess.Popen([MOSQUITTO, "-c", str(work / "mosquitto.conf")])
    node = None
    got: list[tuple[str, Any]] = []
    ready = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_connect = lambda c, *_: c.subscribe("edgekit/demo/#", 1)
    sub.on_subscribe = lambda *_: ready.set()

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload) if m.payload.startswith(b"{") else m.payload.decode()
        got.append((m.topic, body))
        if m.topic.endswith("/events"):
            e = body
            assert isinstance(e, dict)
            print(
                f"  {m.topic}  {e['event_id']}  {e['source']:<18} -> {e.get('name')!s:<12} "
                f"score {e.get('score')}  exit {e.get('exit')}  {e.get('latency_ms')} ms",
                flush=True,
            )
        elif m.topic.endswith("/status"):
            print(f"  {m.topic}  {body}", flush=True)

    sub.on_message = on_message
    try:
        time.sleep(0.5)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        ready.wait(10)
        inbox = work / "inbox"
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apps.iot_node",
                "--package",
                args.package,
                "--device",
                "demo",
                "--broker",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                str(work / "state"),
                "--inbox",
                str(inbox),
                "--stats-s",
                "2",
            ],
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + 60
        while not inbox.is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(args.n):
            img = (ds.x_test[i] * 255).round().astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
            (inbox / f".test{i}.png").write_bytes(buf.getvalue())
            os.replace(inbox / f".test{i}.png", inbox / f"test{i}.png")
            print(f"dropped test{i}.png (true class: {ds.labels[int(ds.y_test[i])]})", flush=True)
        while time.monotonic() < deadline:
            if sum(t.endswith("/events") for t, _ in got) >= args.n and any(
                t.endswith("/stats") for t, _ in got
            ):
                break
            time.sleep(0.1)
        stats = [b for t, b in got if t.endswith("/stats")]
        if stats and isinstance(stats[-1], dict):
            s = stats[-1]
            print(
                f"  stats: processed {s['processed']}, outbox {s['outbox_depth']}, "
                f"dropped {s['dropped']}, exits {s['model']['exit_histogram']}",
                flush=True,
            )
    finally:
        if node is not None:
            node.send_signal(signal.SIGTERM)
            node.wait(30)
        time.sleep(0.3)
        sub.disconnect()
        sub.loop_stop()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    n_events = sum(t.endswith("/events") for t, _ in got)
    print(f"iot demo: {n_events} events for {args.n} images")
    return 0 if n_events >= args.n else 1


if __name__ == "__main__":
    sys.exit(main())
