"""Optional MQTT events: one QoS 1 message per result, through the IoT node's MQTT link.

The link (``apps.iot_node.link``: paho-mqtt 2.x, MQTT 5, a retained ``online``/``offline``
status with a last will, reconnects with backoff, TLS and passwords) is reused as it is; the
topics are the node's: ``PREFIX/DEVICE/events`` and ``PREFIX/DEVICE/status``.

Unlike the node, the camera keeps no on-disk outbox: its results are live, and a stale
frame's answer is worth little after a restart. Memory stays bounded instead: while the
broker is away, or ``max_inflight`` events wait for their PUBACK, new results are not
published but counted (``skipped``), never queued without limit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ._app import Result

__all__ = ["MqttEvents", "parse_broker"]


def parse_broker(spec: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (``[v6]:PORT``) -> (host, port); port 0 means the default."""
    host, port = spec, 0
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], spec)
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        port = _port(p, spec)
    if not host:
        raise ValueError(f"--mqtt {spec!r}: give a broker as HOST or HOST:PORT")
    return host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"--mqtt {spec!r}: the port must be a number from 1 to 65535")
    return int(text)


class MqttEvents:
    """``on_result`` sink: publishes each :class:`Result` as JSON on ``.../events``.

    ``device`` names the topics (a plain name, as for the IoT node); ``source`` and
    ``package`` go into every event. Other keyword arguments are the node's
    ``Config`` fields (``username``, ``password_file``, ``tls``, ``tls_ca``, ``topic_prefix``,
    ``max_inflight``, ...).
    """

    def __init__(
        self, broker: str, port: int, device: str, *, source: str, package: str, **opts: Any
    ) -> None:
        from apps.iot_node.config import Config  # paho is imported only when asked for
        from apps.iot_node.link import Link

        self.cfg = Config(device=device, broker=broker, port=port, **opts)
        self.source, self.package = source, package
        self.boot = time.time_ns()  # event ids stay unique across restarts
        self.published = 0
        self.acked = 0
        self.skipped = 0
        self._pending: set[int] = set()
        self._early: set[int] = set()  # PUBACKs drained before publish() returned their id
        self.link = Link(self.cfg, acks=True)  # it counts its events' PUBACKs
        self._topic = self.cfg.topic("events")

    def start(self, wait_s: float = 5.0) -> MqttEvents:
        """Connect (paho retries in the background); wait up to ``wait_s`` for the broker so
        that the first frames are not skipped. False in :attr:`connected` means it is away."""
        self.link.start()
        self.link.connected.wait(wait_s)
        return self

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def __call__(self, r: Result) -> None:
        self._drain()
        if not self.link.connected.is_set() or len(self._pending) >= self.cfg.max_inflight:
            self.skipped += 1
            return
        event = {
            "event_id": f"{self.cfg.device}-{self.boot}-{r.seq}",
            "device": self.cfg.device,
            "source": self.source,
            "package": self.package,
            **r.to_json(),
        }
        mid = self.link.publish(self._topic, json.dumps(event).encode())
        if mid is None:
            self.skipped += 1
            return
        self.published += 1
        if mid in self._early:
            self._early.discard(mid)
            self.acked += 1
        else:
            self._pending.add(mid)

    def _drain(self) -> None:
        link = self.link
        while link.acked:
            mid, _ok = link.acked.popleft()
            if mid in self._pending:
                self._pending.discard(mid)
                self.acked += 1
            elif len(self._early) < 4 * self.cfg.max_inflight:  # status messages never match
                self._early.add(mid)
        while link.inbox:  # the node's infer/cmd topics: the camera answers neither
            link.ack(link.inbox.popleft())

    def stats(self) -> dict[str, int]:
        self._drain()
        return {"published": self.published, "acked": self.acked, "skipped": self.skipped}

    def close(self, timeout: float = 3.0) -> None:
        """Wait up to ``timeout`` for the PUBACKs of what was published, then say offline."""
        deadline = time.monotonic() + timeout
        while self.link.connected.is_set() and time.monotonic() < deadline:
            self._drain()
            if not self._pending:
                break
            self.link.wake.wait(0.05)
            self.link.wake.clear()
        self.link.close()
