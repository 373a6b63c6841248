"""SSH targets: ``user@host[:port]`` or an alias from ``~/.ssh/config``."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Target", "default_ssh_config", "parse_target"]

_SPEC = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Target:
    """Where a device is and how to log in. ``name`` is what the user typed."""

    name: str
    host: str
    user: str
    port: int = 22
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    known_hosts: tuple[str, ...] = field(default=())
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        """``user@host:port``, as it goes over the wire."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_key(self) -> str:
        """The name known_hosts files use for this host (``[host]:port`` off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return self.name


def default_ssh_config() -> Path:
    """``$EDGEKIT_SSH_CONFIG`` or ``~/.ssh/config``."""
    return Path(os.environ.get("EDGEKIT_SSH_CONFIG") or Path.home() / ".ssh" / "config")


def _lookup(alias: str, config_path: Path | None) -> dict[str, Any]:
    path = config_path or default_ssh_config()
    if not path.is_file():
        return {}
    import paramiko  # the deploy extra; the caller checked it

    cfg = paramiko.SSHConfig.from_path(str(path))
    return dict(cfg.lookup(alias))


def parse_target(spec: str, *, ssh_config: str | os.PathLike[str] | None = None) -> Target:
    """Resolve ``user@host[:port]`` or a ``~/.ssh/config`` alias into a :class:`Target`.

    HostName, User, Port, IdentityFile, ProxyJump, UserKnownHostsFile and ConnectTimeout
    are honoured; values written in ``spec`` win over the config's.
    """
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"not an SSH target: {spec!r} (expected user@host[:port] or an alias)")
    host = m["host"].strip("[]")
    cfg = _lookup(host, Path(ssh_config) if ssh_config else None)
    hostname = cfg.get("hostname", host)
    user = m["user"] or cfg.get("user") or getpass.getuser()
    port = int(m["port"] or cfg.get("port", 22))
    ids = tuple(os.path.expanduser(p) for p in cfg.get("identityfile", []))
    jump = cfg.get("proxyjump")
    if jump and jump.lower() == "none":
        jump = None
    known = tuple(
        os.path.expanduser(p) for p in str(cfg.get("userknownhostsfile", "")).split() if p
    )
    timeout = float(cfg.get("connecttimeout", 10))
    return Target(spec, hostname, user, port, ids, jump, known, timeout)
