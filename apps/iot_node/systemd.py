"""sd_notify over systemd's NOTIFY_SOCKET (a datagram socket), with the stdlib only."""

from __future__ import annotations

import contextlib
import os
import socket
import time

__all__ = ["Notifier"]


class Notifier:
    """Sends ``READY=1``, ``WATCHDOG=1``, ``STATUS=...`` when systemd asked for them.

    Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
    """

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if addr:
            if addr.startswith("@"):  # abstract namespace
                addr = "\0" + addr[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.connect(addr)
            # Never block the node: a datagram socket's sender blocks when the queue is full.
            self._sock.setblocking(False)
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        pid = os.environ.get("WATCHDOG_PID")
        if pid and int(pid) != os.getpid():
            usec = 0  # the watchdog is meant for another process
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self.watchdog_s = usec / 2e6 if usec > 0 else 0.0
        self._last_ping = 0.0

    def send(self, message: str) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # systemd went away: nothing to tell
                self._sock.send(message.encode())

    def ping(self) -> None:
        """A watchdog keep-alive, at most every half interval."""
        if self.watchdog_s and time.monotonic() - self._last_ping >= self.watchdog_s:
            self._last_ping = time.monotonic()
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
