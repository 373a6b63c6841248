"""Real MQTT for the tests: a Mosquitto broker on a free loopback port, a recording
subscriber, and a TCP proxy that can lose PUBACKs (to force a resend).

The broker is Debian's ``/usr/sbin/mosquitto`` started with its own config file; it keeps
its persistence (sessions, queued messages) in a folder the broker's user can write, so a
restart keeps what a real broker would keep.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _net import free_port
from _wait import wait_for
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = "/usr/sbin/mosquitto"


class Broker:
    """``/usr/sbin/mosquitto -c CONF`` on 127.0.0.1:``port``; ``stop``/``start`` keep its
    persistence. ``extra`` lines go into the config (TLS, passwords); ``{port}`` in them is
    the broker's port. Without ``port`` the broker picks a free one, and picks again if another
    process takes it between the pick and mosquitto's bind."""

    def __init__(
        self, folder: Path, port: int | None = None, extra: str = "", host: str = "127.0.0.1"
    ) -> None:
        self.folder = folder
        self.host = host
        self._own_port = port is None
        self.port = port or free_port()
        self._extra = extra
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "mosquitto.log"
        # As root, mosquitto runs as its own user, which cannot enter pytest's 0700 folders:
        # its persistence goes into a folder of its own under /tmp, owned by that user.
        self.data = Path(tempfile.mkdtemp(prefix="edgekit-mosquitto-"))
        user = ""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("mosquitto")
                os.chown(self.data, pw.pw_uid, pw.pw_gid)
            except KeyError:
                user = "user root\n"
        self._user = user
        self.conf = folder / "mosquitto.conf"
        self._write_conf()
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> None:
        extra = self._extra.replace("{port}", str(self.port))
        anon = "" if "password_file" in extra else "allow_anonymous true\n"
        listener = "" if "listener" in extra else f"listener {self.port} {self.host}\n"
        self.conf.write_text(
            f"{self._user}{listener}{anon}persistence true\npersistence_location {self.data}/\n"
            f"log_dest stderr\nlog_type error\nlog_type warning\n{extra}"
        )

    def start(self) -> Broker:
        for attempt in range(5):
            seen = self.log.stat().st_size if self.log.exists() else 0
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=log)
            try:
                wait_for(self._accepting, 10, f"mosquitto on port {self.port} (log: {self.log})")
                return self
            except AssertionError:
                with open(self.log, "rb") as f:
                    f.seek(seen)
                    taken = b"Address already in use" in f.read()
                if not (taken and self._own_port and attempt < 4):
                    raise
                self.stop(kill=True)
                self.port = free_port()
                self._write_conf()
        raise AssertionError("unreachable")

    def _accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
            return True
        return False

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its persistence) or SIGKILL."""
        if self.proc is None:
            return
        (self.proc.kill if kill else self.proc.terminate)()
        self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        """Stop, and delete the persistence folder."""
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def have_mosquitto() -> bool:
    return os.path.exists(MOSQUITTO) or shutil.which("mosquitto") is not None


class Recorder:
    """A subscriber with a persistent MQTT 5 session: every message on ``topics``, in order."""

    def __init__(
        self, port: int, topics: list[str], client_id: str, host: str = "127.0.0.1", **tls: Any
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls:
            c.tls_set(**{k: v for k, v in tls.items() if k != "auth"})
        if "auth" in tls:
            c.username_pw_set(*tls["auth"])
        c.reconnect_delay_set(1, 2)

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_: Any) -> None:
            self.subscribed.set()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.messages.append(msg)

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect(host, port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        wait_for(self.subscribed.is_set, 10, "the recorder's subscription")

    def on(self, suffix: str) -> list[Any]:
        """Decoded JSON payloads of the messages whose topic ends with ``suffix``."""
        with self._lock:
            msgs = [m for m in self.messages if m.topic.endswith(suffix)]
        return [json.loads(m.payload) for m in msgs]

    def raw(self, suffix: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PubackDropper:
    """A TCP proxy to the broker that swallows the first ``drop`` PUBACKs on its first
    connection, then cuts that connection: the client must resend (DUP) what it published.
    Later connections pass everything through. With ``client_id``, the lossy connection is
    instead the first whose CONNECT carries that client id (for a program with several)."""

    def __init__(self, broker_port: int, drop: int, client_id: str | None = None) -> None:
        self.broker_port = broker_port
        self.drop = drop
        self.client_id = client_id
        self.dropped = 0
        self.connections = 0
        self._lossy_taken = False
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            lossy = self.connections == 1
            if self.client_id is not None:
                # The client's first bytes are its CONNECT (one small packet): peek at them.
                first = b""
                with contextlib.suppress(OSError):
                    client.settimeout(10)
                    first = client.recv(4096, socket.MSG_PEEK)
                    client.settimeout(None)
                lossy = not self._lossy_taken and self.client_id.encode() in first
                self._lossy_taken |= lossy
            threading.Thread(target=self._copy, args=(client, upstream), daemon=True).start()
            threading.Thread(
                target=self._packets, args=(upstream, client, lossy), daemon=True
            ).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _packets(self, src: socket.socket, dst: socket.socket, lossy: bool) -> None:
        """Forward broker->client packet by packet, losing PUBACKs (type 4) while lossy."""
        f = src.makefile("rb")
        try:
            while True:
                head = f.read(1)
                if not head:
                    break
                length, mult, raw = 0, 1, b""
                while True:
                    b = f.read(1)
                    raw += b
                    length += (b[0] & 0x7F) * mult
                    mult *= 128
                    if not b[0] & 0x80:
                        break
                body = f.read(length)
                if lossy and head[0] >> 4 == 4 and self.dropped < self.drop:
                    self.dropped += 1
                    if self.dropped == self.drop:
                        time.sleep(0.3)  # let the client publish a little more, unacked
                        break
                    continue
                dst.sendall(head + raw + body)
        except (OSError, IndexError):
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._srv.close()
