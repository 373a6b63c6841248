"""The network between the device and the server: a namespace and a shaped veth pair
(``Link``), and a user-space proxy that adds fixed latency (``DelayProxy``: no netem here)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time

__all__ = ["TBF", "DelayProxy", "Link"]

TBF = "burst {burst} latency 400ms"


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


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Link:
    """A network namespace for the device and a veth pair to the host, shaped with tbf."""

    def __init__(self) -> None:
        n = os.getpid() % 10000
        self.ns = f"eksplit{n}"
        self.host_if, self.dev_if = f"eksh{n}", f"eksd{n}"
        net = 16 + (os.getpid() % 200)
        self.host_ip, self.dev_ip = f"10.213.{net}.1", f"10.213.{net}.2"

    def up(self) -> None:
        _run(["ip", "netns", "add", self.ns])
        _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.dev_if])
        _run(["ip", "link", "set", self.dev_if, "netns", self.ns])
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        ns = ["ip", "netns", "exec", self.ns]
        _run([*ns, "ip", "addr", "add", f"{self.dev_ip}/30", "dev", self.dev_if])
        _run([*ns, "ip", "link", "set", self.dev_if, "up"])
        _run([*ns, "ip", "link", "set", "lo", "up"])

    def shape(self, mbit: float | None, burst: str = "32kbit") -> None:
        """Both directions at ``mbit`` (None: unshaped), with a bucket of ``burst``."""
        for pre, dev in (([], self.host_if), (["ip", "netns", "exec", self.ns], self.dev_if)):
            _run([*pre, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if mbit is not None:
                _run([*pre, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                      f"{mbit}mbit", *TBF.format(burst=burst).split()])  # fmt: skip

    def down(self) -> None:
        _run(["ip", "link", "del", self.host_if], check=False)
        _run(["ip", "netns", "del", self.ns], check=False)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]
