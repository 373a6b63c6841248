"""The node keeps within the broker's MQTT 5 Receive Maximum (a real Mosquitto announcing 6):
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
    import iot_node.node

    yield iot_node
    for name in [m for m in sys.modules if m == "iot_node" or m.startswith("iot_node.")]:
        del sys.modules[name]


def test_events_in_flight_stay_within_the_brokers_receive_maximum(
    iot: Any, tmp_path: Path, digits_pkg: Path
) -> None:
    broker = Broker(tmp_path / "mosquitto", extra="max_inflight_messages 6\n").start()
    cfg = iot.config.Config(
        device="quota",
        package=str(digits_pkg),
        policy="full",
        broker="127.0.0.1",
        port=broker.port,
        state_dir=str(tmp_path / "state"),
        inbox=str(tmp_path / "inbox"),
    )
    node = iot.node.Node(cfg)
    held: list[int] = []  # events with paho, unacknowledged, after each hand-over
    publish = node.link.publish

    def counting(topic: str, payload: bytes, **kw: Any) -> int | None:
        mid = publish(topic, payload, **kw)
        held.append(len(node._inflight) + 1)
        return mid

    node.link.publish = counting
    try:
        node.link.start()
        wait_for(node.link.connected.is_set, 20, "the node's connection")
        assert node.link.send_quota == 6  # from the CONNACK
        rows = [(f"ev{i}", cfg.topic("events"), b"{}") for i in range(40)]
        node.outbox.add(rows, handed=0)

        # The main loop's work, by hand: hand over, take PUBACKs, delete, until all are out.
        def drained() -> bool:
            node._pump()
            node._flush_acked()
            return node.outbox.depth == 0

        wait_for(drained, 30, "all 40 events acknowledged")
        assert len(held) == 40
        assert max(held) <= 6 - 3, held  # 3 of the 6 places stay free for status and replies
    finally:
        node.link.close()
        node.outbox.close()
        node.model.close()
        broker.remove()
