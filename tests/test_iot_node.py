"""apps/iot_node against a real Mosquitto, the node running as a real subprocess.

Every scenario checks the delivery guarantee the same way: the set of unique ``event_id``s a
subscriber receives maps one-to-one onto the inputs (minus exactly what the outbox cap
dropped, which the node's ``dropped`` counter must equal).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _mqtt import Broker, PubackDropper, Recorder, have_mosquitto, wait_for
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps"

if not have_mosquitto():  # under CI the skip rule in conftest.py makes this a failure
    pytest.skip(
        "mosquitto is not installed (scripts/system-deps.sh installs it)", allow_module_level=True
    )

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.remove()


@pytest.fixture(scope="module")
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Test images of the digits set as uint8 (H, W) arrays, and their labels."""
    import edgekit

    ds = edgekit.load_dataset("digits")
    return (ds.x_test[..., 0] * 255).round().astype(np.uint8), ds.y_test


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def drop(inbox: Path, images: np.ndarray, start: int, n: int) -> list[str]:
    """Write ``n`` PNGs the way a producer should: a dot-name, then a rename."""
    names = []
    for i in range(start, start + n):
        name = f"img{i:04d}.png"
        tmp = inbox / f".{name}"
        tmp.write_bytes(png(images[i % len(images)]))
        os.replace(tmp, inbox / name)
        names.append(name)
    return names


class NodeProc:
    """``python -m iot_node`` in apps/, logging to a file."""

    def __init__(self, tmp: Path, package: Path, port: int, device: str, **flags: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.device = device
        self.inbox = tmp / "inbox"
        self.state = tmp / "state"
        self.args = [
            sys.executable, "-m", "iot_node", "--package", str(package), "--device", device,
            "--broker", "127.0.0.1", "--port", str(port), "--state-dir", str(self.state),
            "--inbox", str(self.inbox), "--stats-s", "0.5",
        ]  # fmt: skip
        for k, v in flags.items():  # a value of "" is a bare switch (--ha-discovery)
            self.args += [f"--{k.replace('_', '-')}"] + ([str(v)] if v != "" else [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "node.log"

    def start(self, env: dict[str, str] | None = None) -> NodeProc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=APPS, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        wait_for(lambda: self.inbox.is_dir() or self._dead(), 60, "the node's inbox")
        return self

    def _dead(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the node exited ({self.proc.returncode}):\n{self.tail()}")
        return False

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def done(self) -> int:
        return len(list((self.inbox / "done").iterdir()))

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.proc = None
        return rc

    def publisher(self) -> int:
        """The pid of the node's publisher process (its one child)."""
        assert self.proc is not None
        pid = self.proc.pid
        kids = wait_for(
            lambda: Path(f"/proc/{pid}/task/{pid}/children").read_text().split(), 30, "a child"
        )
        assert len(kids) == 1, kids
        return int(kids[0])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.kill()


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    for n in started:
        n.close()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for r in made:
        r.close()


def events_by_source(rec: Recorder) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ev in rec.on("/events"):
        out.setdefault(ev["source"], set()).add(ev["event_id"])
    return out


def check_exactly_once(rec: Recorder, sources: set[str]) -> dict[str, str]:
    """Each input arrived under exactly one event id, no event id under two inputs."""
    seen = events_by_source(rec)
    assert set(seen) == sources, f"missing {sources - set(seen)}, extra {set(seen) - sources}"
    assert all(len(ids) == 1 for ids in seen.values()), {
        s: i for s, i in seen.items() if len(i) > 1
    }
    ids = [next(iter(v)) for v in seen.values()]
    assert len(set(ids)) == len(ids)
    return {s: next(iter(i)) for s, i in seen.items()}


def wait_sources(rec: Recorder, want: set[str], timeout: float, node: NodeProc) -> None:
    def ready() -> bool:
        node._dead()
        return want <= set(events_by_source(rec))

    try:
        wait_for(ready, timeout, f"events for {len(want)} inputs")
    except AssertionError as exc:
        got = set(events_by_source(rec))
        raise AssertionError(f"{exc}; missing {sorted(want - got)[:10]}\n{node.tail()}") from None


def request(port: int, payload: bytes, corr: bytes, device: str) -> dict[str, Any]:
    """An MQTT 5 request/response round trip with its own client."""
    got: list[Any] = []
    ready = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"req-{corr.hex()}", protocol=5)
    c.on_subscribe = lambda *_: ready.set()
    c.on_message = lambda _c, _u, m: got.append(m)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.subscribe(f"replies/{corr.hex()}", 1)
        wait_for(ready.is_set, 10, "the requester's subscription")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"replies/{corr.hex()}"
        props.CorrelationData = corr
        c.publish(f"edgekit/{device}/infer", payload, qos=1, properties=props)
        wait_for(lambda: got, 20, "the reply to an MQTT request")
    finally:
        c.disconnect()
        c.loop_stop()
    assert got[0].properties.CorrelationData == corr
    return json.loads(got[0].payload)


def command(port: int, device: str, body: dict[str, Any]) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(f"edgekit/{device}/cmd", json.dumps(body), qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


# -- scenarios -----------------------------------------------------------------------------


def test_normal_run(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    """Inbox files and MQTT requests in, one event each; status, stats, commands, systemd
    notifications and a graceful SIGTERM."""
    images, labels = digit_images
    dev = "normal"
    rec = Recorder(broker.port, [f"edgekit/{dev}/#", "homeassistant/#"], "rec-normal")
    recorders.append(rec)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.1)
    got: list[str] = []
    reading = threading.Event()

    def read_notify() -> None:  # as systemd does: keep reading, or the sender's queue fills
        while not reading.is_set():
            with contextlib.suppress(TimeoutError):
                got.append(notify.recv(4096).decode())

    reader = threading.Thread(target=read_notify, daemon=True)
    reader.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    import edgekit

    with edgekit.load(digits_pkg, policy="full") as ref:
        expect = [ref.predict(images[i]).label for i in range(40)]
    node = NodeProc(tmp_path, digits_pkg, broker.port, dev, policy="full", ha_discovery="")
    node.inbox.mkdir()
    names = drop(node.inbox, images, 0, 40)
    (node.inbox / "broken.png").write_bytes(b"not an image at all")
    os.utime(node.inbox / "broken.png", (0, 0))
    nodes.append(node.start(env))
    wait_for(lambda: [m for m in rec.raw("/status") if m.payload == b"online"], 30, "online")

    # An MQTT 5 request (PNG bytes, then .npy) answered on its response topic.
    reply = request(broker.port, png(images[0]), b"\x01corr-a", dev)
    assert reply["ok"] and reply["label"] == expect[0] and reply["source"].startswith("mqtt:")
    buf = io.BytesIO()
    np.save(buf, images[1])
    reply2 = request(broker.port, buf.getvalue(), b"\x02corr-b", dev)
    assert reply2["ok"] and reply2["label"] == expect[1]

    sources = {f"inbox:{n}" for n in [*names, "broken.png"]}
    sources |= {reply["source"], reply2["source"]}
    wait_sources(rec, sources, 60, node)
    ids = check_exactly_once(rec, sources)
    assert ids[reply["source"]] == reply["event_id"]
    evs = {e["source"]: e for e in rec.on("/events")}
    assert not evs["inbox:broken.png"]["ok"] and "image" in evs["inbox:broken.png"]["error"]
    good = [evs[f"inbox:{n}"] for n in names]
    for key in ("label", "name", "score", "exit", "stages_run", "latency_ms", "offloaded", "ts"):
        assert all(key in e for e in good), key
    assert {e["package"] for e in good} == {"digits"} and all(e["deploy"] for e in good)
    # Decoded exactly as the arrays: the same answers as predict on them.
    assert [e["label"] for e in good] == expect
    assert np.mean(np.array(expect) == labels[:40]) >= 0.7
    wait_for(lambda: node.done() == 40, 10, "40 files in done/")
    failed = node.inbox / "failed"
    wait_for(lambda: [p.name for p in failed.iterdir()] == ["broken.png"], 10, "failed/broken.png")
    assert not [p for p in node.inbox.iterdir() if p.is_file()]

    # Commands: applied once per id; a bad one is answered, not fatal.
    command(broker.port, dev, {"id": "c1", "cmd": "policy", "policy": "threshold:0.5"})
    command(broker.port, dev, {"id": "c1", "cmd": "policy", "policy": "full"})
    command(broker.port, dev, {"id": "c2", "cmd": "nonsense"})
    command(broker.port, dev, {"id": "c3", "cmd": "stats"})
    results = wait_for(lambda: len(rec.on("/cmd/result")) >= 4 and rec.on("/cmd/result"), 20, "4")
    by = [(r["id"], r["ok"], r.get("duplicate", False)) for r in results]
    assert by == [
        ("c1", True, False),
        ("c1", True, True),
        ("c2", False, False),
        ("c3", True, False),
    ]
    wait_for(lambda: rec.on("/stats")[-1]["model"]["policy"].startswith("threshold"), 10, "policy")

    stats = rec.on("/stats")[-1]
    assert stats["commands"] == 3
    wait_for(lambda: rec.on("/stats")[-1]["uptime_s"] > stats["uptime_s"], 10, "periodic stats")
    stats = rec.on("/stats")[-1]
    assert stats["processed"] == 42 and stats["failed"] == 1 and stats["dropped"] == 0
    assert stats["outbox_depth"] == 0 and stats["commands"] == 3, stats
    # the model's own stats (this one was loaded by the policy command: nothing run yet)
    assert {"exit_histogram", "latency_ms", "policy"} <= set(stats["model"])

    # Home Assistant discovery: retained sensor configs that read the events topic.
    ha = [json.loads(m.payload) for m in rec.raw("/config") if m.topic.startswith("homeassistant")]
    assert {c["unique_id"] for c in ha} == {"edgekit_normal_label", "edgekit_normal_latency"}
    assert all(c["state_topic"] == f"edgekit/{dev}/events" for c in ha)

    assert node.stop() == 0
    status = [m.payload for m in rec.raw("/status")]
    assert status[0] == b"online" and status[-1] == b"offline"
    wait_for(lambda: "STOPPING=1" in got, 10, "STOPPING=1 on the notify socket")
    reading.set()
    reader.join()
    notify.close()
    assert got[0].startswith("READY=1") and "WATCHDOG=1" in got and "STOPPING=1" in got


def test_broker_restart_midstream(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    images, _ = digit_images
    rec = Recorder(broker.port, ["edgekit/restart/events"], "rec-restart")
    recorders.append(rec)
    node = NodeProc(tmp_path, digits_pkg, broker.port, "restart")
    nodes.append(node.start())
    names = drop(node.inbox, images, 0, 30)
    wait_for(lambda: len(rec.on("/events")) >= 10, 30, "the first events")
    broker.stop()
    names += drop(node.inbox, images, 30, 30)
    wait_for(lambda: node.done() == 60, 30, "all 60 inputs classified while the broker is down")
    broker.start()
    names += drop(node.inbox, images, 60, 20)
    wait_sources(rec, {f"inbox:{n}" for n in names}, 60, node)
    check_exactly_once(rec, {f"inbox:{n}" for n in names})
    assert node.stop() == 0


def test_sigkill_while_broker_down(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    """Events committed while the broker is down survive a SIGKILL of the node; an input
    whose event was committed but whose file was not moved yet when it died is moved after
    the restart, not read again: one event, under the id it was committed with."""
    images, _ = digit_images
    rec = Recorder(broker.port, ["edgekit/killed/#"], "rec-killed")
    recorders.append(rec)
    node = NodeProc(tmp_path, digits_pkg, broker.port, "killed")
    nodes.append(node.start())
    names = drop(node.inbox, images, 0, 15)
    wait_sources(rec, {f"inbox:{n}" for n in names}, 30, node)
    broker.stop()
    names += drop(node.inbox, images, 15, 25)
    wait_for(lambda: node.done() == 40, 30, "40 inputs classified while the broker is down")
    publisher = node.publisher()
    node.kill()
    # The publisher dies with the node (PR_SET_PDEATHSIG): it never publishes alone.
    wait_for(lambda: not _alive(publisher), 10, "the publisher gone with the node")
    # As if it had died right after a commit, before the publisher moved the file: the
    # outbox holds the event and the file's record, the file is still in the inbox.
    planted = node.inbox / "planted.png"
    planted.write_bytes(png(images[3]))
    st = planted.stat()
    event = {"event_id": "killed-1-999", "source": "inbox:planted.png", "ok": True, "label": 0}
    db = sqlite3.connect(node.state / "outbox.sqlite3")
    with db:
        db.execute(
            "INSERT INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
            ("killed-1-999", "edgekit/killed/events", json.dumps(event).encode()),
        )
        db.execute(
            "INSERT INTO files (name, ident, ok, event_id) VALUES (?, ?, 1, ?)",
            ("planted.png", f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}", "killed-1-999"),
        )
    db.close()
    broker.start()
    node.start()
    want = {f"inbox:{n}" for n in [*names, "planted.png"]}
    wait_sources(rec, want, 60, node)
    ids = check_exactly_once(rec, want)
    assert ids["inbox:planted.png"] == "killed-1-999"
    wait_for(lambda: (node.inbox / "done" / "planted.png").exists(), 10, "planted.png moved")
    assert {ids[f"inbox:{n}"].split("-")[1] for n in names} == {"1"}  # all from the first boot
    wait_for(lambda: (rec.on("/stats") or [{}])[-1].get("boot") == 2, 10, "stats of boot 2")
    assert node.stop() == 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_publisher_that_dies_is_restarted(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    """The node supervises its publisher: one killed mid-stream is started again, and the
    events it had in flight are resent under their ids (none lost, none under two ids)."""
    images, _ = digit_images
    rec = Recorder(broker.port, ["edgekit/supervised/#"], "rec-supervised")
    recorders.append(rec)
    node = NodeProc(tmp_path, digits_pkg, broker.port, "supervised")
    nodes.append(node.start())
    names = drop(node.inbox, images, 0, 20)
    wait_for(lambda: len(rec.on("/events")) >= 5, 30, "the first events")
    first = node.publisher()
    os.kill(first, signal.SIGKILL)
    names += drop(node.inbox, images, 20, 20)
    want = {f"inbox:{n}" for n in names}
    wait_sources(rec, want, 60, node)
    check_exactly_once(rec, want)
    assert node.publisher() != first
    wait_for(
        lambda: ((rec.on("/stats") or [{}])[-1].get("publisher") or {}).get("restarts") == 1,
        10,
        "stats saying the publisher was restarted once",
    )
    assert node.stop() == 0


def test_lost_puback_is_resent(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    """PUBACKs lost on the way back: the node resends (DUP) until acknowledged; the
    subscriber sees duplicates under the same event id, and the outbox empties."""
    images, _ = digit_images
    rec = Recorder(broker.port, ["edgekit/lossy/#"], "rec-lossy")
    recorders.append(rec)
    proxy = PubackDropper(broker.port, drop=6, client_id="edgekit-lossy-events")  # events
    try:
        node = NodeProc(tmp_path, digits_pkg, proxy.port, "lossy")
        node.inbox.mkdir()
        names = drop(node.inbox, images, 0, 30)
        nodes.append(node.start())
        want = {f"inbox:{n}" for n in names}
        wait_sources(rec, want, 60, node)
        resent = wait_for(
            lambda: proxy.connections >= 2 and len(rec.on("/events")) > len(want), 30, "a resend"
        )
        assert resent and proxy.dropped == 6
        t = time.time()
        wait_for(
            lambda: (
                (s := (rec.on("/stats") or [{"ts": 0}])[-1])["ts"] > t and s["outbox_depth"] == 0
            ),
            20,
            "an empty outbox",
        )
        check_exactly_once(rec, want)
        assert node.stop() == 0
    finally:
        proxy.close()


def test_outbox_cap_drops_oldest_and_counts(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    images, _ = digit_images
    rec = Recorder(broker.port, ["edgekit/capped/#"], "rec-capped")
    recorders.append(rec)
    broker.stop()
    try:
        node = NodeProc(tmp_path, digits_pkg, broker.port, "capped", outbox_cap=8, max_inflight=4)
        nodes.append(node.start())
        names = drop(node.inbox, images, 0, 30)
        wait_for(lambda: node.done() == 30, 30, "30 inputs classified with no broker")
    finally:
        broker.start()
    newest = {f"inbox:{n}" for n in names[-8:]}
    wait_sources(rec, newest, 60, node)
    wait_for(lambda: rec.on("/stats")[-1]["outbox_depth"] == 0, 20, "an empty outbox")
    received = set(events_by_source(rec))
    check_exactly_once(rec, received)
    assert received == newest  # the oldest were dropped
    assert rec.on("/stats")[-1]["dropped"] == 30 - len(received) == 22
    assert node.stop() == 0


def test_follows_a_new_deployment(
    broker: Broker, digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    """``current`` switched (as ``edgekit push`` does: a rename of a new symlink) while inputs
    stream in: the node moves to the new deploy without a restart and loses no input."""
    images, _ = digit_images
    rec = Recorder(broker.port, ["edgekit/follow/#"], "rec-follow")
    recorders.append(rec)
    pkgroot = tmp_path / "opt" / "digits"
    for d in ("r1-envA", "r2-envA"):
        shutil.copytree(digits_pkg, pkgroot / "deploys" / d / "package")
    (pkgroot / "current").symlink_to("deploys/r1-envA")
    node = NodeProc(tmp_path, pkgroot / "current", broker.port, "follow", watch_s=0.1)
    nodes.append(node.start())
    names: list[str] = []

    def feed() -> None:
        for i in range(60):
            names.extend(drop(node.inbox, images, i, 1))
            time.sleep(0.02)

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_for(lambda: len(rec.on("/events")) >= 15, 30, "events from the first deploy")
    (pkgroot / "current.new").symlink_to("deploys/r2-envA")
    os.replace(pkgroot / "current.new", pkgroot / "current")
    feeder.join()
    want = {f"inbox:{n}" for n in names}
    wait_sources(rec, want, 60, node)
    check_exactly_once(rec, want)
    in_order = sorted(rec.on("/events"), key=lambda e: int(e["event_id"].rsplit("-", 1)[1]))
    deploys = [e["deploy"] for e in in_order]
    assert deploys[0] == "r1-envA" and deploys[-1] == "r2-envA"
    switch = deploys.index("r2-envA")
    assert set(deploys[switch:]) == {"r2-envA"}, "went back to the old deploy"
    # A broken push leaves the running model in place, and says so in the stats.
    (pkgroot / "deploys" / "r3-envA").mkdir()
    os.replace(pkgroot / "current", pkgroot / "old")
    (pkgroot / "current").symlink_to("deploys/r3-envA")
    wait_for(lambda: rec.on("/stats")[-1]["deploy_error"], 10, "a deploy_error in the stats")
    more = drop(node.inbox, images, 100, 3)
    wait_sources(rec, {f"inbox:{n}" for n in more}, 20, node)
    assert {e["deploy"] for e in rec.on("/events")[-3:]} == {"r2-envA"}
    assert node.stop() == 0


def test_bad_config_says_what_is_wrong(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('device = "bad name!"\n')
    r = subprocess.run(
        [sys.executable, "-m", "iot_node", "--config", str(cfg)],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "not a plain name" in r.stderr
    cfg.write_text('brokr = "x"\n')
    r = subprocess.run(
        [sys.executable, "-m", "iot_node", "--config", str(cfg)],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "unknown settings" in r.stderr and "broker" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "iot_node", "--package", str(tmp_path / "nothing")],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "st")},
    )
    assert r.returncode == 2 and "no edge package" in r.stderr and "edgekit push" in r.stderr


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (ca.pem, server.pem, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgekit test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_and_password(
    digits_pkg: Path, digit_images: Any, tmp_path: Path, nodes: Any, recorders: Any
) -> None:
    """A broker that takes only TLS and a password: the node connects with --tls, --tls-ca,
    --username and --password-file; a wrong password is refused, and the log says so."""
    import tempfile

    images, _ = digit_images
    secrets = Path(tempfile.mkdtemp(prefix="edgekit-mqtt-tls-"))  # readable by mosquitto
    try:
        ca, cert, key = _tls_files(secrets)
        passwd = secrets / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwd), "node", "s3cret"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("mosquitto")
            for p in (secrets, ca, cert, key, passwd):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        b = Broker(
            tmp_path / "tls-broker",
            extra="listener {port} 127.0.0.1\n"
            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            f"password_file {passwd}\nallow_anonymous false\n",
        ).start()
        port = b.port
        try:
            rec = Recorder(
                port, ["edgekit/tls/events"], "rec-tls", ca_certs=str(ca), auth=("node", "s3cret")
            )
            recorders.append(rec)
            (tmp_path / "pw").write_text("s3cret\n")
            (tmp_path / "bad").write_text("wrong\n")
            bad = NodeProc(tmp_path / "bad-node", digits_pkg, port, "tls-bad", tls="",
                           tls_ca=ca, username="node", password_file=tmp_path / "bad")  # fmt: skip
            nodes.append(bad.start())
            node = NodeProc(tmp_path, digits_pkg, port, "tls", tls="", tls_ca=ca,
                            username="node", password_file=tmp_path / "pw")  # fmt: skip
            nodes.append(node.start())
            names = drop(node.inbox, images, 0, 10)
            wait_sources(rec, {f"inbox:{n}" for n in names}, 60, node)
            check_exactly_once(rec, {f"inbox:{n}" for n in names})
            wait_for(lambda: "refused the connection" in bad.tail(), 30, "a refusal in the log")
            assert "tls-bad" not in json.dumps(rec.on("/events"))
            assert node.stop() == 0 and bad.stop() == 0
        finally:
            b.remove()
    finally:
        shutil.rmtree(secrets, ignore_errors=True)
