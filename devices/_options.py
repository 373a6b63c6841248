"""Connection settings apart from what an operation does with the device.

``ConnectOptions`` says how to reach and log in to a device (fabric's ``connect_kwargs``);
each operation's options hold one: ``DeviceOptions`` (probe, deployments, run, predict),
``RollbackOptions`` (and the smoke test it runs), and ``PushOptions`` (push and bench, in
``_push``). ``connect()`` is the one place a :class:`Connection` is made from them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ._connection import Connection
from ._remote import DEFAULT_ROOT
from ._target import Target, parse_target

__all__ = ["ConnectOptions", "DeviceOptions", "RollbackOptions", "connect"]


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach and log in to a device.

    ``None`` leaves a setting to the target string and the ssh config (``~/.ssh/config``
    or ``ssh_config``); a value here wins over both. ``password`` is used for the login
    only and never saved or shown.
    """

    ssh_config: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    proxy_jump: str | None = None
    connect_timeout: float | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port (1-65535)")
        if self.connect_timeout is not None and not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, not {self.connect_timeout}")

    def target(self, spec: Target | str) -> Target:
        """``spec`` resolved through the ssh config, with these settings applied."""
        t = spec if isinstance(spec, Target) else parse_target(spec, ssh_config=self.ssh_config)
        over: dict[str, Any] = {
            k: v
            for k, v in (("user", self.user), ("port", self.port), ("proxy_jump", self.proxy_jump))
            if v is not None
        }
        if self.key_file is not None:
            over["identity_files"] = (os.path.expanduser(self.key_file),)
        if self.connect_timeout is not None:
            over["connect_timeout"] = self.connect_timeout
        return dataclasses.replace(t, **over) if over else t


def connect(target: Target | str, options: ConnectOptions | None = None) -> Connection:
    """A :class:`Connection` to ``target`` with these settings (it opens on first use)."""
    o = options or ConnectOptions()
    return Connection(
        o.target(target),
        ssh_config=o.ssh_config,
        accept_new_host_key=o.accept_new_host_key,
        known_hosts=o.known_hosts,
        password=o.password,
    )


@dataclass(frozen=True)
class DeviceOptions:
    """Options of the everyday operations (probe, deployments, run, predict): how to
    connect, where edgekit lives on the device, whether to print progress."""

    connect: ConnectOptions = ConnectOptions()
    root: str = DEFAULT_ROOT
    verbose: bool = True


@dataclass(frozen=True)
class RollbackOptions(DeviceOptions):
    """``rollback``'s options: those of :class:`DeviceOptions`, and how long the smoke test
    of the version it switches back to may take."""

    smoke_timeout: float = 600.0
