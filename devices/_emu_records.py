"""The emulator's value objects: ``VirtualDevice`` (how to reach a device over SSH; its
record on disk) and ``DeviceStatus`` (what ``status`` reports)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._emu_paths import ARCH
from ._emu_sys import _write_atomic

__all__ = ["DeviceStatus", "VirtualDevice"]


@dataclass(frozen=True)
class VirtualDevice:
    """A running (or last started) virtual device and how to reach it over SSH."""

    name: str
    host: str
    """Address sshd listens on: 10.77.N.2 in a network namespace, 127.0.0.1 on loopback."""
    port: int
    user: str
    key_path: Path | None
    """Private key for ``IdentityFile`` (None when only a public key was given)."""
    public_key_path: Path
    known_hosts_path: Path
    """A known_hosts file holding this device's host key only."""
    known_hosts_line: str
    host_key_fingerprint: str
    """``SHA256:...`` of the device's ED25519 host key, as ``ssh-keygen -l`` prints it."""
    netns: str | None
    veth: str | None
    """Host side of the veth pair (where bandwidth is shaped); None on loopback."""
    host_address: str | None
    """The host as the device sees it (10.77.N.1); None on loopback."""
    rootfs: Path
    """The device's root as mounted on the host."""
    state_dir: Path
    sshd_pid: int
    arch: str = ARCH
    python: str = "system"
    """``system`` (3.11), ``none`` (no python3) or ``old`` (a python3 claiming to be 3.7.3)."""
    python_version: str | None = None
    disk_limit: str | None = None
    """Size of the device's writable disk (tmpfs), e.g. ``64M``; None: the host's disk."""
    disk_limit_path: str | None = None
    """Where the limit applies: ``/`` (the whole device) or ``/opt/edgekit``."""
    rate: str | None = None
    """Bandwidth shaped with tbf in both directions, e.g. ``10mbit``."""
    model: str | None = None
    """Board model in the device tree (/sys/firmware/devicetree/base/model), if any."""

    @property
    def target(self) -> str:
        """``root@10.77.1.2`` or ``root@127.0.0.1:2222``."""
        base = f"{self.user}@{self.host}"
        return base if self.port == 22 else f"{base}:{self.port}"

    @property
    def loopback(self) -> bool:
        return self.netns is None

    def ssh_config_block(self, alias: str | None = None) -> str:
        """A ``~/.ssh/config`` block for this device (host key checked against its own file)."""
        lines = [
            f"Host {alias or self.name}",
            f"    HostName {self.host}",
            f"    User {self.user}",
            f"    Port {self.port}",
        ]
        if self.key_path is not None:
            lines += [f"    IdentityFile {self.key_path}", "    IdentitiesOnly yes"]
        lines += [
            f"    UserKnownHostsFile {self.known_hosts_path}",
            "    StrictHostKeyChecking yes",
        ]
        return "\n".join(lines) + "\n"

    def write_ssh_config(
        self, path: str | Path = "~/.ssh/config", alias: str | None = None
    ) -> Path:
        """Add (or replace) this device's block in an ssh config file; returns its path."""
        alias = alias or self.name
        p = Path(path).expanduser()
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        begin = f"# >>> edgekit virtual device {alias} >>>"
        end = f"# <<< edgekit virtual device {alias} <<<"
        block = f"{begin}\n{self.ssh_config_block(alias)}{end}\n"
        text = p.read_text() if p.exists() else ""
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _m: block, text, count=1)
        else:
            # ssh uses the first matching value: put the block first so it wins over `Host *`.
            text = block + ("\n" + text if text else "")
        _write_atomic(p, text, mode=0o600)
        return p

    def ssh_argv(self, *command: str, ssh: str = "ssh") -> list[str]:
        """argv for the OpenSSH client, checking the host key, e.g. ``ssh_argv("uname", "-m")``."""
        argv = [ssh, "-p", str(self.port)]
        if self.key_path is not None:
            argv += ["-i", str(self.key_path), "-o", "IdentitiesOnly=yes"]
        argv += [
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            f"{self.user}@{self.host}",
        ]
        return argv + list(command)

    def to_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        d["target"] = self.target
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VirtualDevice:
        known = cls.__dataclass_fields__
        fields = {k: v for k, v in d.items() if k in known}  # records of other versions
        for k in ("public_key_path", "known_hosts_path", "rootfs", "state_dir"):
            fields[k] = Path(fields[k])
        if fields.get("key_path"):
            fields["key_path"] = Path(fields["key_path"])
        return cls(**fields)


@dataclass(frozen=True)
class DeviceStatus:
    """What ``status`` reports for one device."""

    name: str
    running: bool
    """sshd is alive."""
    ready: bool
    """sshd answered with an SSH banner."""
    device: VirtualDevice | None
    """The last start's record (None if the device was never started or was purged)."""
    pids: tuple[int, ...]
    """Every process running inside the device (sshd, sessions and what they started)."""
    qdisc: str | None = None
    """``tc qdisc show`` of the host-side veth."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": "running" if self.running else "stopped",
            "ready": self.ready,
            "pids": list(self.pids),
            "qdisc": self.qdisc,
            "device": self.device.to_dict() if self.device else None,
        }
