"""The MQTT 5 connections (paho-mqtt 2.x): session, last will, reconnects, acknowledgements.

The node has two: its own (``Link(cfg)``: the last will, ``status``, ``stats``, requests and
commands in, their answers out) and the publisher process's (``Link(cfg, events=True)``:
only the events, at the rate inputs come in). paho runs each one's network in its own
thread; what the owner's main thread needs crosses through thread-safe deques: received
messages, and (events link) the message ids the broker acknowledged. (paho may call
``on_publish`` before ``publish()`` has returned the message id, so the publisher matches
ids to outbox rows only when it drains the acks.)
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import Config

__all__ = ["Link"]

log = logging.getLogger("iot_node")
QOS0_BACKLOG = 1000  # QoS 0 requests waiting in memory at most


MQTT_MAX_QUOTA = 65_535  # Receive Maximum when the broker announces none
CONTROL_INFLIGHT = 5  # the node's own link: status, stats, answers unacknowledged at once


class Link:
    """One MQTT client: the node's (subscribes to ``infer`` and ``cmd``, says ``online``, has
    the ``offline`` last will) or, with ``events``, the publisher's (events only)."""

    def __init__(
        self,
        cfg: Config,
        receive_maximum: int = 32,
        *,
        events: bool = False,
        acks: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.events = events
        # Whether PUBACKs are queued in ``acked`` for the owner to drain (the events link's
        # and an app that counts its own, e.g. the smart camera's; default: events only).
        self.acks = events if acks is None else acks
        self.inbox: collections.deque[mqtt.MQTTMessage] = collections.deque()
        self.acked: collections.deque[tuple[int, bool]] = collections.deque()
        self.connected = threading.Event()
        self.wake = threading.Event()  # set when something arrives for the main thread
        self.burst = 1  # PUBACKs that wake the main thread (the publisher sets it)
        self.connects = 0
        self.overflow = 0  # QoS 0 requests dropped because too many were waiting
        # QoS 1 messages the broker takes unacknowledged (its CONNACK's Receive Maximum)
        self.send_quota = MQTT_MAX_QUOTA
        self.on_connected: list[Any] = []  # called (in paho's thread) after each CONNACK
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgekit-{cfg.device}" + ("-events" if events else ""),
            protocol=mqtt.MQTTv5,
            manual_ack=True,  # requests are acknowledged once their event is committed
        )
        if not events:
            c.will_set(cfg.topic("status"), b"offline", qos=1, retain=True)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.secret() or None)
        if cfg.tls:
            c.tls_set(
                ca_certs=cfg.tls_ca or None,
                certfile=cfg.tls_cert or None,
                keyfile=cfg.tls_key or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        # The publisher keeps at most max_inflight events with paho itself, and no more than
        # the broker's Receive Maximum (publisher.py's pump). paho's own limit stays off
        # there: with one set, every PUBACK walks all of paho's in-flight messages looking
        # for a queued one (about 15 us of CPU per event at 256 in flight). The node's own
        # link sends little (status, stats, answers) and uses paho's limit (set before
        # connecting, so below the smallest Receive Maximum brokers commonly announce).
        c.max_inflight_messages_set(0 if self.acks else CONTROL_INFLIGHT)
        c.on_connect = self._on_connect
        c.on_socket_open = self._on_socket_open
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self.client = c
        self._receive_maximum = receive_maximum

    def start(self) -> None:
        """Connect in the background; paho retries with backoff (1 s doubling to 30 s)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self._receive_maximum  # bounds unacked requests held here
        props.MaximumPacketSize = self.cfg.max_request_bytes + 65_536
        self.client.connect_async(
            self.cfg.broker,
            self.cfg.broker_port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.cfg.broker, reason)
            return
        self.connects += 1
        # MQTT 5: more unacknowledged QoS 1 publishes than this is a protocol error (strict
        # brokers disconnect; mosquitto announces 20). paho does not apply it by itself, and
        # its own limit cannot change once connected: publisher.py's pump keeps events below it.
        self.send_quota = getattr(_p, "ReceiveMaximum", None) or MQTT_MAX_QUOTA
        log.info(
            "%s connected to %s:%d (session %s)",
            "events" if self.events else "node",
            self.cfg.broker,
            self.cfg.broker_port,
            "resumed" if flags.session_present else "new",
        )
        if not self.events:
            client.subscribe([(self.cfg.topic("infer"), 1), (self.cfg.topic("cmd"), 1)])
            client.publish(self.cfg.topic("status"), b"online", qos=1, retain=True)
        for fn in self.on_connected:
            fn()
        self.connected.set()
        self.wake.set()

    @staticmethod
    def _on_socket_open(_c: Any, _u: Any, sock: Any) -> None:
        # paho leaves Nagle on: small PUBLISHes would wait for the broker's TCP ACK.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)
        self.connected.clear()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        if not self.acks:
            return  # status, stats, answers: nothing waits for their PUBACK
        # 0x10 "no matching subscribers" is a success: the broker has the message.
        self.acked.append((mid, not reason.is_failure))
        if len(self.acked) >= self.burst:  # wake the publisher once per burst, not per ack
            self.wake.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # QoS 1 messages are bounded by ReceiveMaximum (unacked ones); QoS 0 ones are not:
        # past a backlog, those are dropped (and counted) rather than held in memory.
        if msg.qos == 0 and len(self.inbox) >= QOS0_BACKLOG:
            self.overflow += 1
            return
        self.inbox.append(msg)
        self.wake.set()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, props: Any = None
    ) -> int | None:
        """Hand one message to paho; its message id, or None when paho refused it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("could not publish to %s: %s", topic, mqtt.error_string(info.rc))
            return None
        return int(info.mid)

    def reply(self, request: mqtt.MQTTMessage, payload: dict[str, Any]) -> None:
        """Answer an MQTT 5 request on its response topic, with its correlation data."""
        rp = getattr(request.properties, "ResponseTopic", None)
        if not rp:
            return
        props = Properties(PacketTypes.PUBLISH)
        corr = getattr(request.properties, "CorrelationData", None)
        if corr is not None:
            props.CorrelationData = corr
        props.ContentType = "application/json"
        self.publish(rp, json.dumps(payload).encode(), qos=1, props=props)

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    def close(self, timeout: float = 2.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly, stop the network thread."""
        if self.connected.is_set() and not self.events:
            info = self.client.publish(self.cfg.topic("status"), b"offline", qos=1, retain=True)
            # If the connection goes down meanwhile, the last will says offline.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.connected.clear()  # a disconnect we asked for: no "reconnecting" warning
        self.client.disconnect()
        self.client.loop_stop()
