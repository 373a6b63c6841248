"""A shaped link: a network namespace joined to the host by a veth pair, shaped with tbf.

One implementation for the virtual device (its sshd runs in the namespace) and for the
benchmarks (a worker in the namespace talks to a server on the host). Public as
``edgekit.devices.emulate.ShapedLink``. Needs root and iproute2 (``ip``, ``tc``)::

    from edgekit.devices import emulate

    link = emulate.ShapedLink(
        "eksplit42",                  # the namespace (ip netns add NAME)
        host_if="eksh42",             # host end of the veth pair (at most 15 characters)
        dev_if="eksd42",              # its end inside the namespace (default: eth0)
        host_ip="10.213.42.1",        # the host as seen from the namespace
        dev_ip="10.213.42.2",         # the namespace's address (a /30 by default)
    )
    with link:                        # up() on entry, down() on exit (also on an error)
        link.shape("20mbit", burst="32kbit", latency="400ms")   # tbf on both ends
        subprocess.run(link.argv("python3", "-m", "worker"))     # runs in the namespace
        link.shape(None)              # unshaped again
        print(link.qdisc())           # `tc qdisc show` of the host end

Methods:

- ``up()``: ``ip netns add``, the veth pair (the peer is created inside the namespace under
  ``peer`` and renamed ``dev_if``), both addresses ``/prefix_len``, both ends and the
  namespace's ``lo`` up. If a step after the namespace's creation fails, what it made is
  removed before the error propagates.
- ``shape(rate, burst=None, latency=None)``: ``tc qdisc replace ... root tbf`` on the host end
  and on ``dev_if`` inside the namespace, so both directions are limited. ``rate`` is a tc rate
  (``10mbit``, ``2.5mbit``, ``512kbit``, ``1mbps`` = bytes/s) or bits/s as an int; ``None`` or
  ``"none"`` removes the shaping. ``burst`` is a tc size (``32kbit``, ``16kb``) or bytes as an
  int; default: 20 ms of traffic, at least 16 KiB. ``latency`` defaults to the constructor's
  (``100ms``). Returns the rate as given (None when removed).
- ``down()``: deletes the namespace (which takes the veth pair with it) and the host end if it
  is still there; does nothing for what does not exist, so it is safe to call twice.
- ``exec_prefix()``: ``["ip", "netns", "exec", NAME]``; ``argv(*cmd)`` is that plus ``cmd``.
- ``exists``: whether the namespace exists now.

Errors are :class:`EmulatorError` (a command failed, the message has its output) and
:class:`HostNotSupported` (``ip`` or ``tc`` is not installed).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType

from ._emu_errors import EmulatorError
from ._emu_sys import _run

__all__ = ["ShapedLink"]

_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$")


def _rate_bits(rate: str) -> int:
    """Bits per second of a tc rate (``10mbit``, ``1mbps``); at least 8 kbit."""
    m = _RATE_RE.match(rate.strip().lower())
    if not m:
        raise EmulatorError(
            f"invalid rate {rate!r}",
            hint="give a tc rate like 10mbit, 512kbit or 1mbps (bytes/s), or 'none'",
            value=rate,
        )
    value, unit = float(m.group(1)), m.group(2)
    scale = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    bits = value * scale[unit] if unit in scale else value * 8 * scale[unit[:-3] + "bit"]
    if bits < 8000:
        raise EmulatorError(f"rate {rate!r} is below 8kbit", hint="give at least 8kbit")
    return int(bits)


def _tbf_args(rate: str | int, burst: str | int | None, latency: str) -> list[str]:
    bits = rate if isinstance(rate, int) else _rate_bits(rate)
    if burst is None:
        burst = max(16 << 10, bits // 8 // 50)  # at least 16 KiB, or 20 ms of traffic
    return ["tbf", "rate", str(bits), "burst", str(burst), "latency", latency]


class ShapedLink:
    """A network namespace + a veth pair to the host + addresses + tbf on both ends.

    See the module docstring for a full example. ``host_ip``/``dev_ip`` are needed by
    :meth:`up` only: a link made from the names alone can still be shaped and taken down.
    """

    def __init__(
        self,
        netns: str,
        *,
        host_if: str,
        host_ip: str | None = None,
        dev_ip: str | None = None,
        dev_if: str = "eth0",
        peer: str | None = None,
        prefix_len: int = 30,
        latency: str = "100ms",
    ) -> None:
        self.netns = netns
        self.host_if = host_if
        self.host_ip = host_ip
        self.dev_ip = dev_ip
        self.dev_if = dev_if
        self.peer = peer or dev_if
        """Name the namespace's end is created under (then renamed ``dev_if``)."""
        self.prefix_len = prefix_len
        self.latency = latency
        self.rate: str | int | None = None

    def __repr__(self) -> str:
        return (
            f"ShapedLink({self.netns!r}, host_if={self.host_if!r}, host_ip={self.host_ip!r}, "
            f"dev_ip={self.dev_ip!r}, dev_if={self.dev_if!r})"
        )

    @property
    def exists(self) -> bool:
        return Path(f"/run/netns/{self.netns}").exists()

    def exec_prefix(self) -> list[str]:
        """``ip netns exec NAME``: put it before a command to run it in the namespace."""
        return ["ip", "netns", "exec", self.netns]

    def argv(self, *command: str) -> list[str]:
        return [*self.exec_prefix(), *command]

    def up(self) -> ShapedLink:
        if self.host_ip is None or self.dev_ip is None:
            raise EmulatorError(
                f"{self!r} has no addresses to bring up", hint="give host_ip= and dev_ip="
            )
        ns, host_if, n = self.netns, self.host_if, f"/{self.prefix_len}"
        _run(["ip", "netns", "add", ns])
        try:
            _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", self.peer,
                  "netns", ns])  # fmt: skip
            if self.peer != self.dev_if:
                _run(["ip", "-n", ns, "link", "set", self.peer, "name", self.dev_if])
            _run(["ip", "addr", "add", self.host_ip + n, "dev", host_if])
            _run(["ip", "link", "set", host_if, "up"])
            _run(["ip", "-n", ns, "addr", "add", self.dev_ip + n, "dev", self.dev_if])
            _run(["ip", "-n", ns, "link", "set", self.dev_if, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.down()
            raise
        return self

    def shape(
        self, rate: str | int | None, burst: str | int | None = None, latency: str | None = None
    ) -> str | int | None:
        """tbf at ``rate`` on both ends (``None``/``"none"``: remove it); returns the rate."""
        if rate is None or rate == "none":
            _run(["tc", "qdisc", "del", "dev", self.host_if, "root"], check=False)
            _run(["tc", "-n", self.netns, "qdisc", "del", "dev", self.dev_if, "root"], check=False)
            self.rate = None
            return None
        tbf = _tbf_args(rate, burst, latency or self.latency)
        _run(["tc", "qdisc", "replace", "dev", self.host_if, "root", *tbf])
        _run(["tc", "-n", self.netns, "qdisc", "replace", "dev", self.dev_if, "root", *tbf])
        self.rate = rate
        return rate

    def qdisc(self) -> str | None:
        """``tc qdisc show`` of the host end (None when it does not exist)."""
        if not Path(f"/sys/class/net/{self.host_if}").exists():
            return None
        out = _run(["tc", "qdisc", "show", "dev", self.host_if], check=False).stdout
        return out.strip() or None

    def down(self) -> None:
        if self.exists:
            _run(["ip", "netns", "del", self.netns], check=False)
        if Path(f"/sys/class/net/{self.host_if}").exists():
            _run(["ip", "link", "del", self.host_if], check=False)

    def __enter__(self) -> ShapedLink:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
