"""The network between the device and the server: a namespace and a shaped veth pair
(``Link``, on ``edgekit.devices.emulate.ShapedLink``), and a user-space proxy that adds
fixed latency (``DelayProxy``: no netem here)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

__all__ = ["LATENCY", "TBF", "DelayProxy", "Link"]

LATENCY = "400ms"
TBF = "burst {burst} latency " + LATENCY


class DelayProxy:
    """A TCP proxy that holds every chunk ``one_way`` seconds in each direction: fixed
    latency in user space (no netem here). One thread per direction per connection."""

    def __init__(self, host: str, upstream: tuple[str, int], one_way: float) -> None:
        self.upstream = upstream
        self.one_way = one_way
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.one_way > 0:
                    time.sleep(self.one_way)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class Link:
    """A network namespace for the device and a veth pair to the host, shaped with tbf
    (``burst B latency 400ms``) on both ends: ``edgekit.devices.emulate.ShapedLink`` with
    this benchmark's names, addresses and rates in Mbit/s."""

    def __init__(self) -> None:
        from edgekit.devices import emulate  # here: the device's worker process needs none of it

        n = os.getpid() % 10000
        net = 16 + (os.getpid() % 200)
        self.ns = f"eksplit{n}"
        self.host_if, self.dev_if = f"eksh{n}", f"eksd{n}"
        self.host_ip, self.dev_ip = f"10.213.{net}.1", f"10.213.{net}.2"
        self._link = emulate.ShapedLink(
            self.ns,
            host_if=self.host_if,
            dev_if=self.dev_if,
            host_ip=self.host_ip,
            dev_ip=self.dev_ip,
            latency=LATENCY,
        )

    def up(self) -> None:
        self._link.up()

    def shape(self, mbit: float | None, burst: str = "32kbit") -> None:
        """Both directions at ``mbit`` (None: unshaped), with a bucket of ``burst``."""
        self._link.shape(None if mbit is None else f"{mbit}mbit", burst=burst)

    def down(self) -> None:
        self._link.down()

    def exec_prefix(self) -> list[str]:
        return self._link.exec_prefix()
