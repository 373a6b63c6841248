"""The publisher keeps within the broker's MQTT 5 Receive Maximum (a real Mosquitto announcing 6):
more unacknowledged QoS 1 publishes than that is a protocol error strict brokers disconnect
for, and paho does not apply the limit by itself."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _mqtt import Broker, have_mosquitto, wait_for

APPS = Path(__file__).resolve().parents[1] / "apps"

if not have_mosquitto():  # under CI the skip rule in conftest.py makes this a failure
    pytest.skip(
        "mosquitto is not installed (scripts/system-deps.sh installs it)", allow_module_level=True
    )
pytest.importorskip("paho.mqtt.client")


@pytest.fixture
def iot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(APPS))
    import iot_node.config
    import iot_node.publisher

    yield iot_node
    for name in [m for m in sys.modules if m == "iot_node" or m.startswith("iot_node.")]:
        del sys.modules[name]


def test_events_in_flight_stay_within_the_brokers_receive_maximum(iot: Any, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "mosquitto", extra="max_inflight_messages 6\n").start()
    cfg = iot.config.Config(
        device="quota",
        broker="127.0.0.1",
        port=broker.port,
        state_dir=str(tmp_path / "state"),
        inbox=str(tmp_path / "inbox"),
    )
    Path(cfg.state_dir).mkdir()
    pub = iot.publisher.Publisher(cfg)  # the publisher process's work, in process
    held: list[int] = []  # events with paho, unacknowledged, after each hand-over
    publish = pub.link.publish

    def counting(topic: str, payload: bytes, **kw: Any) -> int | None:
        mid = publish(topic, payload, **kw)
        held.append(len(pub._inflight) + 1)
        return mid

    pub.link.publish = counting
    try:
        pub.link.start()
        wait_for(pub.link.connected.is_set, 20, "the publisher's connection")
        assert pub.link.send_quota == 6  # from the CONNACK
        rows = [(f"ev{i}", cfg.topic("events"), b"{}") for i in range(40)]
        pub.committed(pub.outbox.add(rows))

        # The publisher's loop, by hand: hand over, take PUBACKs, delete, until all are out.
        def drained() -> bool:
            pub.pump()
            return pub.outbox.count() == 0

        wait_for(drained, 30, "all 40 events acknowledged")
        assert len(held) == 40
        assert max(held) <= 6, held  # its own connection: the whole quota is the events'
    finally:
        pub.link.close()
        pub.outbox.close()
        broker.remove()
