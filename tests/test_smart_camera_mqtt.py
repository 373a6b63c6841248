"""The smart camera's optional MQTT events, against a real Mosquitto on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _mqtt import Broker, Recorder, have_mosquitto, wait_for
from _net import refused_port
from _sshd import need

from apps.smart_camera._mqtt import parse_broker  # internal: the --mqtt URL parser alone

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("paho.mqtt.client")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    need(have_mosquitto(), "mosquitto is not installed (scripts/system-deps.sh installs it)")
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.remove()


def _camera(pkg: Path, log: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "apps.smart_camera", str(pkg), "--source",
           "test://fashion-mnist", "--frames", "40", "--no-web", "--no-cache", "--log", str(log),
           *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_result_is_an_event(fmnist_fast_pkg: Path, broker: Broker, tmp_path: Path) -> None:
    rec = Recorder(broker.port, ["edgekit/cam1/#"], "cam-test-events")
    try:
        log = tmp_path / "log.jsonl"
        p = _camera(fmnist_fast_pkg, log, "--mqtt", f"127.0.0.1:{broker.port}",
                    "--mqtt-device", "cam1")  # fmt: skip
        assert p.returncode == 0, p.stderr
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert len(lines) == 40
        events = wait_for(lambda: len(rec.on("/events")) >= 40 and rec.on("/events"), 10,
                          "40 events")  # fmt: skip
        assert len({e["event_id"] for e in events}) == 40 == len(events)
        by_seq = {e["seq"]: e for e in events}
        for line in lines:  # the event says what the log says, frame by frame
            e = by_seq[line["seq"]]
            assert [e[k] for k in ("label", "exit", "where")] == [
                line[k] for k in ("label", "exit", "where")
            ]
            assert e["device"] == "cam1" and e["package"] == "fmnist"
            assert e["source"].startswith("test://fashion-mnist")
        assert "40 events published, 40 acknowledged, 0 skipped" in p.stdout
        status = wait_for(lambda: rec.raw("/status"), 5, "status messages")
        assert status[0].payload == b"online" and status[-1].payload == b"offline"
    finally:
        rec.close()
    late = Recorder(broker.port, ["edgekit/cam1/status"], "cam-test-late")  # sees the retained
    try:
        retained = wait_for(lambda: late.raw("/status"), 5, "the retained status")
        assert retained[-1].payload == b"offline" and retained[-1].retain
    finally:
        late.close()


def test_broker_away_frames_still_classified(fmnist_fast_pkg: Path, tmp_path: Path) -> None:
    """No broker: every frame is still classified and logged; nothing queues without bound."""
    log = tmp_path / "log.jsonl"
    with refused_port() as port:
        p = _camera(fmnist_fast_pkg, log, "--mqtt", f"127.0.0.1:{port}", "--mqtt-device", "c2")
    assert p.returncode == 0, p.stderr
    assert len(log.read_text().splitlines()) == 40
    assert "0 events published, 0 acknowledged, 40 skipped" in p.stdout


def test_bad_broker_spec_is_a_clear_error(fmnist_fast_pkg: Path, tmp_path: Path) -> None:
    p = _camera(fmnist_fast_pkg, tmp_path / "l.jsonl", "--mqtt", "host:99999")
    assert p.returncode == 2
    assert "the port must be a number from 1 to 65535" in p.stderr
    assert "Traceback" not in p.stderr
    p = _camera(fmnist_fast_pkg, tmp_path / "l.jsonl", "--mqtt", "h", "--mqtt-device", "a/b")
    assert p.returncode == 2 and "is not a plain name" in p.stderr and "Traceback" not in p.stderr


def test_parse_broker() -> None:
    assert parse_broker("mqtt.local") == ("mqtt.local", 0)
    assert parse_broker("10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_broker("[::1]:1883") == ("::1", 1883)
    with pytest.raises(ValueError, match="HOST or HOST:PORT"):
        parse_broker(":1883")
