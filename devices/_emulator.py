"""A virtual Raspberry Pi: Debian bookworm arm64 under qemu-user, with a real OpenSSH server.

The root filesystem is built once with debootstrap and cached (built in a temporary folder and
renamed into place, so a half-built one is never used). Each device mounts its own overlay of
it (or gets its own copy where overlayfs is unavailable), so what one device writes never
reaches the cache or another device. Its sshd runs chrooted, as an arm64 binary through
binfmt_misc, either in a network namespace of its own (a veth pair to the host, no default
route: like a device in the field it reaches no package index; the host side of the veth is
where ``tc tbf`` shapes its bandwidth) or on the host's loopback.

Everything here needs root. Typical use::

    from edgekit.devices import emulate

    dev = emulate.start("pi0", key="~/.ssh/id_ed25519.pub")
    print(dev.target, dev.host_key_fingerprint)
    dev.write_ssh_config()            # a Host pi0 block in ~/.ssh/config
    emulate.stop("pi0")
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekit._progress import Progress, say

from ._emu_errors import EmulatorError, HostNotSupported
from ._emu_sys import (
    SYS_PATH,
    _is_root,
    _locked,
    _pid_alive,
    _reap,
    _run,
    _user_home,
    _write_atomic,
)
from ._netns import ShapedLink, _rate_bits

__all__ = [
    "DATA_DIR",
    "DeviceStatus",
    "EmulatorError",
    "HostNotSupported",
    "ShapedLink",
    "VirtualDevice",
    "build_rootfs",
    "cache_dir",
    "host_problem",
    "list_devices",
    "shape",
    "start",
    "state_root",
    "status",
    "stop",
]

SUITE = "bookworm"
DEB_ARCH = "arm64"
ARCH = "aarch64"
PACKAGES = ("python3", "python3-venv", "openssh-server")
# Bump when the recipe changes: a cached rootfs with another recipe is rebuilt.
RECIPE = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path("/var/cache/edgekit/emulator")
DEFAULT_STATE = Path("/var/lib/edgekit/emulator")
DEFAULT_NET = "10.77"
#: Where the integrator's push installs on a device; with ``disk_limit`` it is on the small disk.
DATA_DIR = "/opt/edgekit"
PYTHON_MODES = ("system", "none", "old")
STAMP = ".edgekit-rootfs.json"
# Lines debootstrap prints for this recipe (measured), for a progress bar with an ETA.
_DEBOOTSTRAP_LINES = 625
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")
_SIZE_RE = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")
_OLD_PYTHON_DIR = "/usr/lib/edgekit-old-python"
_OLD_PYTHON_WRAPPER = """#!/bin/sh
# edgekit virtual device: pretends to be Python 3.7.3, a Python too old for edgekit.
case "$1" in -V|--version) echo "Python 3.7.3"; exit 0;; esac
PYTHONPATH=%(dir)s${PYTHONPATH:+:$PYTHONPATH} exec %(dir)s/python3.11 "$@"
"""
_OLD_PYTHON_SITE = """import sys
from collections import namedtuple

sys.version_info = namedtuple("version_info", "major minor micro releaselevel serial")(
    3, 7, 3, "final", 0
)
sys.version = "3.7.3 (default, Jan 22 2021, 20:04:44) \\n[GCC 8.3.0]"
sys.hexversion = 0x030703F0
"""


# ---------------------------------------------------------------------------------------------
# Value objects


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


# ---------------------------------------------------------------------------------------------
# Paths, small helpers


def cache_dir(override: str | Path | None = None) -> Path:
    """Where built root filesystems are cached (``EDGEKIT_EMULATOR_CACHE``)."""
    raw = override or os.environ.get("EDGEKIT_EMULATOR_CACHE") or DEFAULT_CACHE
    return Path(raw).expanduser().absolute()


def state_root() -> Path:
    """Where devices keep their disks, logs and records (``EDGEKIT_EMULATOR_STATE``)."""
    raw = os.environ.get("EDGEKIT_EMULATOR_STATE") or DEFAULT_STATE
    return Path(raw).expanduser().absolute()


def _net_prefix() -> str:
    prefix = os.environ.get("EDGEKIT_EMULATOR_NET", DEFAULT_NET)
    if not re.fullmatch(r"\d{1,3}\.\d{1,3}", prefix):
        raise EmulatorError(
            f"EDGEKIT_EMULATOR_NET={prefix!r} is not the first two octets of an IPv4 network",
            hint="use something like 10.77 (devices get 10.77.N.2, the host 10.77.N.1)",
        )
    return prefix


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise EmulatorError(
            f"invalid device name {name!r}",
            hint="use 1-11 characters: lower-case letters, digits and '-' (e.g. pi0); "
            "it names the network namespace ek-NAME and the veth ekh-NAME",
            name=name,
        )


def _netns_name(name: str) -> str:
    return f"ek-{name}"


def _veth_name(name: str) -> str:
    return f"ekh-{name}"


def _link(name: str, index: int | None = None) -> ShapedLink:
    """The device's link: netns ek-NAME, veth ekh-NAME to eth0 inside, 10.77.N.1 and .2."""
    host_ip = dev_ip = None
    if index is not None:
        prefix = _net_prefix()
        host_ip, dev_ip = f"{prefix}.{index}.1", f"{prefix}.{index}.2"
    return ShapedLink(
        _netns_name(name),
        host_if=_veth_name(name),
        host_ip=host_ip,
        dev_ip=dev_ip,
        peer=f"ekd-{name}",
    )


def _size_bytes(text: str) -> int:
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise EmulatorError(
            f"invalid size {text!r}", hint="give a size like 64M, 512k or 1G", value=text
        )
    n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    if n < 4 << 20:
        raise EmulatorError(
            f"disk limit {text!r} is too small",
            hint="give at least 4M (host keys and logs need a little room)",
        )
    return n


# ---------------------------------------------------------------------------------------------
# Host checks


def _require_root() -> None:
    if not _is_root():
        raise HostNotSupported(
            "the virtual device needs root: it mounts filesystems, creates a network namespace "
            "and runs sshd in a chroot",
            hint="run it as root, e.g. `sudo edgekit device emulate start`",
            reason="not root",
        )


def _binfmt_entry() -> Path:
    return Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def _native_arm64() -> bool:
    return platform.machine() in ("aarch64", "arm64")


def ensure_binfmt() -> None:
    """Make aarch64 binaries run here: mount binfmt_misc and enable qemu-aarch64 if needed."""
    if _native_arm64():
        return
    bdir = Path("/proc/sys/fs/binfmt_misc")
    if not (bdir / "register").exists():
        proc = _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(bdir)], check=False)
        if not (bdir / "register").exists():
            raise HostNotSupported(
                "binfmt_misc is not available (cannot run arm64 binaries under qemu-user): "
                + proc.stderr.strip(),
                hint="load the binfmt_misc kernel module (modprobe binfmt_misc), or run on a "
                "host/container that allows mounting it",
                reason="binfmt_misc",
            )
    entry = _binfmt_entry()
    if entry.exists() and not entry.read_text().startswith("enabled"):
        entry.write_text("1")
    if not entry.exists() and shutil.which("update-binfmts"):
        _run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
        if not entry.exists():
            _run(["update-binfmts", "--import", "qemu-aarch64"], check=False)
            _run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    static = shutil.which("qemu-aarch64-static")
    if not entry.exists() and static:
        # What qemu-user-static registers; F opens the interpreter now, so it works in chroots.
        magic = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
        mask = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
        with contextlib.suppress(OSError):
            (bdir / "register").write_text(f":qemu-aarch64:M::{magic}:{mask}:{static}:F")
    if not entry.exists():
        raise HostNotSupported(
            "no qemu-aarch64 binfmt_misc handler: arm64 binaries cannot run on this x86 host",
            hint="apt-get install qemu-user-static binfmt-support (or `make system-deps`)",
            reason="qemu",
        )
    text = entry.read_text()
    flags = re.search(r"^flags: *(\S*)", text, re.MULTILINE)
    if flags is None or "F" not in flags.group(1):
        raise HostNotSupported(
            "the qemu-aarch64 binfmt_misc handler lacks the F flag, so it cannot run inside a "
            "chroot",
            hint="use qemu-user-static's handler: apt-get install qemu-user-static binfmt-support"
            " && update-binfmts --disable qemu-aarch64 && update-binfmts --enable qemu-aarch64",
            reason="qemu",
        )


def qemu_version() -> tuple[int, int] | None:
    """The version of the qemu that runs arm64 binaries here (None if unknown)."""
    entry = _binfmt_entry()
    if not entry.exists():
        return None
    m = re.search(r"^interpreter (\S+)", entry.read_text(), re.MULTILINE)
    if m is None:
        return None
    # Debian's handler (aarch64-binfmt-P) refuses to run by hand: ask what it points to.
    exe = os.path.realpath(m.group(1))
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    v = re.search(r"version (\d+)\.(\d+)", out)
    return (int(v.group(1)), int(v.group(2))) if v else None


def warn_old_qemu() -> None:
    """LiteRT's aarch64 interpreter segfaults under qemu 7.x (bookworm's); say so up front."""
    v = qemu_version()
    if v is not None and v < (8, 0):
        say(
            f"warning: qemu {v[0]}.{v[1]} runs this device; LiteRT crashes under qemu < 8 "
            "(install qemu-user-static from bookworm-backports: `make system-deps` does, then "
            "update-binfmts --disable qemu-aarch64 && update-binfmts --enable qemu-aarch64)"
        )


def _netns_works() -> str | None:
    if not shutil.which("ip"):
        return "iproute2 (the ip command) is not installed"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    proc = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"network namespaces are not available: {proc.stderr.strip()}"
    return None


def host_problem(*, loopback: bool = False, cache: str | Path | None = None) -> str | None:
    """Why this machine cannot run a virtual device, or None if it can.

    Sets up what it may (mounting binfmt_misc, enabling the qemu-aarch64 handler); builds
    nothing. The pytest fixtures skip (or, in CI, fail) with this text.
    """
    try:
        _require_root()
        for tool in ("chroot", "mount", "umount", "unshare", "ssh-keygen", "hostname"):
            if not shutil.which(tool):
                return f"{tool} is not installed (apt-get install openssh-client util-linux)"
        ensure_binfmt()
        if not _rootfs_ready(cache_dir(cache) / f"{SUITE}-{DEB_ARCH}") and not shutil.which(
            "debootstrap"
        ):
            return "debootstrap is not installed (apt-get install debootstrap, or make system-deps)"
        if not loopback:
            problem = _netns_works()
            if problem:
                return problem
    except HostNotSupported as exc:
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    return None


# ---------------------------------------------------------------------------------------------
# Mounts and safe removal


def _mount_points() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4]
            out.append(re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), mp))
    return out


def _mounts_under(path: Path) -> list[str]:
    p = str(path)
    found = {m for m in _mount_points() if m == p or m.startswith(p + "/")}
    return sorted(found, key=lambda m: m.count("/"), reverse=True)


def _unmount_all(path: Path) -> None:
    # A mount can be stacked several times on one point: repeat until none is left.
    for _ in range(10):
        mounts = _mounts_under(path)
        if not mounts:
            return
        for mp in mounts:
            proc = _run(["umount", mp], check=False)
            if proc.returncode != 0:
                _run(["umount", "-l", mp], check=False)
    left = _mounts_under(path)
    if left:
        raise EmulatorError(f"could not unmount {left}", hint="check `fuser -vm` on them")


def _remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a mount (a bind-mounted /dev must never be emptied)."""
    if not path.exists() and not path.is_symlink():
        return
    _unmount_all(path)
    shutil.rmtree(path, ignore_errors=False)


# ---------------------------------------------------------------------------------------------
# The cached root filesystem


def _rootfs_ready(root: Path) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("recipe") == RECIPE


def _read_stamp(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / STAMP).read_text()))
    except (OSError, ValueError):
        return {}


def build_rootfs(
    cache: str | Path | None = None,
    *,
    force: bool = False,
    mirror: str | None = None,
    verbose: bool = True,
) -> Path:
    """Build (once) the Debian bookworm arm64 rootfs and return its cached path.

    Built in a temporary folder next to the cache and renamed into place when complete.
    """
    _require_root()
    cdir = cache_dir(cache)
    if "," in str(cdir) or ":" in str(cdir) or re.search(r"\s", str(cdir)):
        raise EmulatorError(
            f"the cache path {cdir} contains ',', ':' or a space (overlayfs cannot take it)",
            hint="set EDGEKIT_EMULATOR_CACHE or --rootfs-cache to a plain path",
        )
    final = cdir / f"{SUITE}-{DEB_ARCH}"
    if _rootfs_ready(final) and not force:
        return final
    cdir.mkdir(parents=True, exist_ok=True)
    with _locked(cdir / ".lock"):
        if _rootfs_ready(final) and not force:
            return final  # built by someone else while we waited
        if not shutil.which("debootstrap"):
            raise HostNotSupported(
                "debootstrap is not installed (it builds the virtual device's root filesystem)",
                hint="apt-get install debootstrap (or `make system-deps`)",
                reason="debootstrap",
            )
        ensure_binfmt()
        for stale in cdir.glob(f".{final.name}.*"):
            _remove_tree(stale)
        build = cdir / f".{final.name}.build-{os.getpid()}"
        mirror = mirror or os.environ.get("EDGEKIT_EMULATOR_MIRROR") or DEFAULT_MIRROR
        t0 = time.monotonic()
        try:
            _debootstrap(build, mirror, cdir / "build.log", verbose=verbose)
            _finish_rootfs(build, mirror, time.monotonic() - t0)
            if final.exists():
                busy = [d.name for d in list_devices(probe=False) if d.running]
                if busy:
                    raise EmulatorError(
                        f"cannot replace the cached rootfs while devices run: {busy}",
                        hint="stop them first: edgekit device emulate stop --name NAME",
                    )
                old = cdir / f".{final.name}.old-{os.getpid()}"
                os.rename(final, old)
                _remove_tree(old)
            os.rename(build, final)
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(build)
            raise
        if verbose:
            say(f"root filesystem ready in {time.monotonic() - t0:.0f} s: {final}")
        return final


def _debootstrap(build: Path, mirror: str, log: Path, *, verbose: bool) -> None:
    argv = [
        "debootstrap",
        f"--arch={DEB_ARCH}",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(build),
        mirror,
    ]
    if verbose:
        say(f"building the virtual device's root filesystem (once): {' '.join(argv)}")
    tail: list[str] = []
    bar = Progress(
        "debootstrap bookworm arm64", total=_DEBOOTSTRAP_LINES, unit="steps", enabled=verbose
    )
    with open(log, "w") as logf, bar:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
        )
        assert proc.stdout is not None
        try:
            t0 = time.monotonic()
            for line in proc.stdout:
                logf.write(f"{time.monotonic() - t0:7.1f} {line}")
                tail = [*tail[-30:], line.rstrip()]
                bar.update(1, postfix=line.strip()[:60])
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise EmulatorError(
            f"debootstrap failed (exit {rc}):\n" + "\n".join(tail[-12:]),
            hint=f"full log: {log}; check that {mirror} is reachable "
            "(or set EDGEKIT_EMULATOR_MIRROR to a Debian mirror)",
            log=str(log),
        )


def _finish_rootfs(root: Path, mirror: str, seconds: float) -> None:
    # Devices get their own host keys, no DNS and no apt lists; the .debs are not needed.
    for p in (root / "etc/ssh").glob("ssh_host_*"):
        p.unlink()
    for rel in ("etc/resolv.conf", "etc/hostname", "etc/pip.conf"):
        with contextlib.suppress(FileNotFoundError):
            (root / rel).unlink()
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / d).glob("*"):
            if p.is_file():
                p.unlink()
    proc = _run(
        ["chroot", str(root), "/usr/bin/python3", "-c",
         "import ensurepip, platform, venv; print(platform.machine(), platform.python_version())"],
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise EmulatorError(
            "python3 does not run in the new root filesystem: " + proc.stderr.strip()[-500:],
            hint="check the binfmt handler: cat /proc/sys/fs/binfmt_misc/qemu-aarch64",
        )
    machine, pyver = proc.stdout.split()
    stamp = {
        "recipe": RECIPE,
        "suite": SUITE,
        "arch": DEB_ARCH,
        "machine": machine,
        "packages": list(PACKAGES),
        "python": pyver,
        "mirror": mirror,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
    }
    (root / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Device records


def _state_dir(name: str) -> Path:
    return state_root() / name


def _load_record(name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((_state_dir(name) / "device.json").read_text()))
    except (OSError, ValueError):
        return None


def _save_record(name: str, record: dict[str, Any]) -> None:
    _write_atomic(_state_dir(name) / "device.json", json.dumps(record, indent=2) + "\n")


def _device_pids(root: Path, netns: str | None) -> list[int]:
    """Processes whose root is the device's rootfs, or that live in its network namespace."""
    ns_ino = None
    if netns:
        with contextlib.suppress(OSError):
            ns_ino = os.stat(f"/run/netns/{netns}").st_ino
    r = str(root)
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            proot = os.readlink(f"/proc/{entry}/root")
            inside = proot == r or proot.startswith(r + "/")
            if not inside and ns_ino is not None:
                inside = os.stat(f"/proc/{entry}/ns/net").st_ino == ns_ino
        except OSError:
            continue
        if inside:
            found.append(int(entry))
    return sorted(found)


def _sshd_alive(rec: dict[str, Any]) -> bool:
    pid = int(rec.get("device", {}).get("sshd_pid") or 0)
    if pid <= 0 or not _pid_alive(pid):
        return False
    try:
        return os.readlink(f"/proc/{pid}/root") == rec["device"]["rootfs"]
    except PermissionError:
        return True  # not root: cannot look inside, but the pid is alive
    except OSError:
        return False


def _banner(host: str, port: int, timeout: float = 3.0) -> bytes | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data if data.startswith(b"SSH-") else None
    except OSError:
        return None


def status(name: str = "pi0", *, probe: bool = True) -> DeviceStatus:
    """Is the device running, where, which processes run in it."""
    _check_name(name)
    rec = _load_record(name)
    if rec is None:
        return DeviceStatus(name=name, running=False, ready=False, device=None, pids=())
    dev = VirtualDevice.from_dict(rec["device"])
    running = _sshd_alive(rec)
    pids = tuple(_device_pids(dev.rootfs, dev.netns)) if _is_root() else ()
    ready = running and probe and _banner(dev.host, dev.port) is not None
    return DeviceStatus(
        name=name,
        running=running,
        ready=bool(ready),
        device=dev,
        pids=pids,
        qdisc=ShapedLink(dev.netns, host_if=dev.veth).qdisc()
        if running and dev.netns and dev.veth
        else None,
    )


def list_devices(*, probe: bool = True) -> list[DeviceStatus]:
    """Status of every device with a record under :func:`state_root`."""
    root = state_root()
    if not root.is_dir():
        return []
    names = sorted(p.parent.name for p in root.glob("*/device.json"))
    return [status(n, probe=probe) for n in names if _NAME_RE.match(n)]


# ---------------------------------------------------------------------------------------------
# Keys


def _resolve_key(key: str | Path | None, generate: bool) -> tuple[Path, Path | None]:
    """(public key, private key or None) from --key, which may name either half."""
    p = Path(key).expanduser() if key else _user_home() / ".ssh" / "id_ed25519.pub"
    pub, priv = (p, p.with_suffix("")) if p.suffix == ".pub" else (p.with_name(p.name + ".pub"), p)
    if not pub.exists():
        if not generate:
            raise EmulatorError(
                f"no SSH public key at {pub} to install on the virtual device",
                hint=f"pass --key PATH.pub, or --key-generate to create {priv} and {pub}",
                key=str(pub),
            )
        if priv.exists():
            raise EmulatorError(
                f"{priv} exists but {pub} does not",
                hint=f"recreate it: ssh-keygen -y -f {priv} > {pub}",
            )
        priv.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit", "-f", str(priv)])
        uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
        if uid and gid and str(priv).startswith(str(_user_home())):
            for f in (priv, pub):
                os.chown(f, int(uid), int(gid))
        say(f"generated an SSH key pair: {priv}")
    text = pub.read_text().strip()
    if not text.startswith(_KEY_TYPES) or len(text.split()) < 2:
        raise EmulatorError(
            f"{pub} is not an OpenSSH public key",
            hint="give the .pub file written by ssh-keygen (a line like 'ssh-ed25519 AAAA...')",
        )
    return pub, (priv if priv.exists() else None)


def _fingerprint(pubkey_line: str) -> str:
    blob = base64.b64decode(pubkey_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---------------------------------------------------------------------------------------------
# Starting


def _alloc_index(name: str) -> int:
    used = set()
    for p in state_root().glob("*/device.json"):
        if p.parent.name == name:
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            used.add(int(json.loads(p.read_text())["index"]))
    prefix = _net_prefix()
    addrs = (
        _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout if shutil.which("ip") else ""
    )
    for i in range(1, 255):
        if i not in used and f" {prefix}.{i}." not in addrs:
            return i
    raise EmulatorError(
        f"no free {prefix}.N.0/30 network for another device",
        hint="stop --purge unused devices, or set EDGEKIT_EMULATOR_NET",
    )


def _mount_root(sd: Path, lower: Path, disk_bytes: int | None, mode: str) -> tuple[Path, str]:
    """Mount the device's root; returns (root, 'overlay'|'copy')."""
    root = sd / "root"
    root.mkdir(exist_ok=True)
    if mode in ("auto", "overlay") and not (sd / ".copy").exists():
        base = sd
        if disk_bytes:
            base = sd / "disk"
            base.mkdir(exist_ok=True)
            _run(
                ["mount", "-t", "tmpfs", "-o", f"size={disk_bytes},mode=755", "ek-disk", str(base)]
            )
        (base / "upper").mkdir(exist_ok=True)
        (base / "work").mkdir(exist_ok=True)
        opts = f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}"
        proc = _run(["mount", "-t", "overlay", "-o", opts, "ek-root", str(root)], check=False)
        if proc.returncode == 0:
            return root, "overlay"
        if disk_bytes:
            _unmount_all(base)
        if mode == "overlay":
            raise HostNotSupported(
                f"overlayfs mount failed: {proc.stderr.strip()}",
                hint="use rootfs_mode='copy' (a full copy per device)",
                reason="overlay",
            )
    if not (sd / ".copy").exists():
        say(f"copying the root filesystem for this device (no overlay): {root}")
        tmp = sd / "root.tmp"
        _remove_tree(tmp)
        _run(["cp", "-a", "--reflink=auto", str(lower), str(tmp)], timeout=1800)
        root.rmdir()
        os.rename(tmp, root)
        (sd / ".copy").write_text(str(lower) + "\n")
    return root, "copy"


def _mount_board_model(root: Path, model: str) -> None:
    """A device tree with just ``model`` at /sys/firmware/devicetree/base, as on a Pi."""
    fw = root / "sys" / "firmware"
    _run(["mount", "-t", "tmpfs", "-o", "mode=755,size=64k", "ek-fw", str(fw)])
    base = fw / "devicetree" / "base"
    base.mkdir(parents=True)
    (base / "model").write_bytes(model.encode() + b"\0")
    _run(["mount", "-o", "remount,ro", str(fw)])


def _mount_dev(root: Path) -> None:
    """A private /dev (tmpfs with the usual nodes, its own devpts), /proc, a read-only /sys."""
    dev = root / "dev"
    _run(["mount", "-t", "tmpfs", "-o", "mode=755,size=64k,nosuid", "ek-dev", str(dev)])
    for node, major, minor in (
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ):
        os.mknod(dev / node, 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(dev / node, 0o666)
    for link, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(target, dev / link)
    for d in ("pts", "shm"):
        (dev / d).mkdir()
    _run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620", "ek-pts",
          str(dev / "pts")])  # fmt: skip
    _run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=64m,nosuid,nodev", "ek-shm",
          str(dev / "shm")])  # fmt: skip
    _run(["mount", "-t", "proc", "proc", str(root / "proc")])
    _run(["mount", "--bind", "/sys", str(root / "sys")])
    _run(["mount", "-o", "remount,bind,ro", str(root / "sys")])


def _configure_root(root: Path, name: str, pubkey: str, loopback: bool, python: str) -> None:
    etc = root / "etc"
    keyfile = etc / "ssh" / "ssh_host_ed25519_key"
    # A fresh disk (first start, or a volatile --disk-limit one) has no host key yet.
    first = not keyfile.exists()
    if first:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
              "-f", str(keyfile)])  # fmt: skip
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    have = auth.read_text().splitlines() if auth.exists() else []
    if pubkey not in have:
        _write_atomic(auth, "\n".join([*have, pubkey]) + "\n", mode=0o600)
    # What a probe reads to tell a virtual device from hardware (one line).
    (etc / "edgekit-virtual-device").write_text(
        f"qemu-user {ARCH} (edgekit virtual device {name})\n"
    )
    (etc / "hostname").write_text(name + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost\n")
    # No index in the field: no resolver, no pip configuration. On loopback the device shares
    # the host's network, so name resolution points at a loopback address nothing answers.
    for rel in ("resolv.conf", "pip.conf"):
        with contextlib.suppress(FileNotFoundError):
            (etc / rel).unlink()
    if loopback:
        (etc / "resolv.conf").write_text(
            "# edgekit virtual device (loopback mode): no name resolution, no package index\n"
            "nameserver 127.0.0.9\noptions timeout:1 attempts:1\n"
        )
    (root / "run" / "sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    (root / DATA_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if first and python == "none":
        for p in (root / "usr/bin").glob("python3*"):
            p.unlink()
    if first and python == "old":
        old = root / _OLD_PYTHON_DIR.lstrip("/")
        old.mkdir(parents=True, exist_ok=True)
        real = root / "usr/bin/python3.11"
        shutil.copy2(real, old / "python3.11")
        for p in (root / "usr/bin").glob("python3*"):
            p.unlink()
        (old / "sitecustomize.py").write_text(_OLD_PYTHON_SITE)
        wrapper = root / "usr/bin/python3"
        wrapper.write_text(_OLD_PYTHON_WRAPPER % {"dir": _OLD_PYTHON_DIR})
        wrapper.chmod(0o755)
        os.symlink("python3", root / "usr/bin/python3.7")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_sshd(root: Path, name: str, netns: str | None, addr: str, port: int, log: Path) -> int:
    sshd = [
        # -r: no re-exec per connection (saves an emulated exec of sshd on every login)
        "/usr/sbin/sshd", "-D", "-e", "-r", "-p", str(port),
        "-o", f"ListenAddress={addr}",
        "-o", "HostKey=/etc/ssh/ssh_host_ed25519_key",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", "PermitRootLogin=prohibit-password",
        "-o", "UsePAM=no",
        "-o", "UseDNS=no",
        "-o", "PrintMotd=no",
        "-o", "MaxStartups=50:30:200",
        "-o", "MaxSessions=50",
    ]  # fmt: skip
    # unshare --uts gives the device its own hostname; ip netns exec its network. Each execs the
    # next, so the pid we get is sshd's.
    inner = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec chroot "$@"', name,
             str(root), *sshd]  # fmt: skip
    argv = ["ip", "netns", "exec", netns, *inner] if netns else inner
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": SYS_PATH, "LANG": "C.UTF-8"},
        )
    return proc.pid


def _wait_ready(pid: int, host: str, port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            _reap(pid)
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            raise EmulatorError(
                "the virtual device's sshd exited at start:\n" + "\n".join(tail),
                hint=f"full log: {log}",
                log=str(log),
            )
        if _banner(host, port, timeout=2.0):
            return
        time.sleep(0.1)
    raise EmulatorError(
        f"the virtual device's sshd did not answer on {host}:{port} within {timeout:.0f} s",
        hint=f"see {log}",
        log=str(log),
    )


def start(
    name: str = "pi0",
    *,
    key: str | Path | None = None,
    key_generate: bool = False,
    loopback: bool = False,
    port: int = 2222,
    cache: str | Path | None = None,
    rate: str | None = None,
    python: str = "system",
    disk_limit: str | None = None,
    model: str | None = None,
    rootfs_mode: str = "auto",
    timeout: float = 60.0,
    verbose: bool = True,
) -> VirtualDevice:
    """Start (building the cached rootfs the first time) a virtual arm64 device.

    Idempotent: a device already running is returned as it is (and ``key`` is added to its
    authorized_keys). Its disk persists across ``stop``/``start`` until ``stop(purge=True)``.

    Args:
        key: public key to authorize (default ``~/.ssh/id_ed25519.pub``; a private key path
            works too, its ``.pub`` is used). ``key_generate`` creates it if missing.
        loopback: sshd on ``127.0.0.1:port`` in the host's network instead of a namespace.
        rate: shape bandwidth both ways with tbf (``10mbit``); namespace mode only.
        python: ``system`` (3.11), ``none`` (python3 removed) or ``old`` (claims 3.7.3).
        disk_limit: size of the device's writable disk, e.g. ``64M``: writes anywhere on the
            device fail with ENOSPC beyond it (only under /opt/edgekit in copy mode).
        model: a board model for the device tree (``/sys/firmware/devicetree/base/model``),
            e.g. ``Raspberry Pi 4 Model B Rev 1.5``; None: no device tree (a generic board).
        rootfs_mode: ``auto`` (overlay, else a copy), ``overlay`` or ``copy``.
    """
    _check_name(name)
    if python not in PYTHON_MODES:
        raise EmulatorError(
            f"python={python!r} is not one of {PYTHON_MODES}",
            hint="system: Python 3.11; none: no python3; old: a python3 claiming 3.7.3",
        )
    if model is not None and ("\0" in model or "\n" in model or not model.strip()):
        raise EmulatorError(f"invalid board model {model!r}", hint="give one line of text")
    if rootfs_mode not in ("auto", "overlay", "copy"):
        raise EmulatorError(f"rootfs_mode={rootfs_mode!r} is not auto, overlay or copy")
    disk_bytes = _size_bytes(disk_limit) if disk_limit else None
    if rate and rate != "none":
        _rate_bits(rate)
        if loopback:
            raise EmulatorError(
                "bandwidth shaping needs the device in its own network namespace",
                hint="drop --loopback to shape with --rate",
            )
    if loopback and not 0 < port < 65536:
        raise EmulatorError(f"invalid port {port}", hint="give a TCP port like 2222")
    _require_root()
    problem = host_problem(loopback=loopback, cache=cache)
    if problem:
        raise HostNotSupported(problem, reason="host")
    pubkey_path, key_path = _resolve_key(key, key_generate)
    pubkey = " ".join(pubkey_path.read_text().split()[:3])

    with _locked(state_root() / ".lock"):
        rec = _load_record(name)
        if rec is not None and _sshd_alive(rec):
            dev = VirtualDevice.from_dict(rec["device"])
            auth = dev.rootfs / "root/.ssh/authorized_keys"
            if pubkey not in auth.read_text().splitlines():
                with open(auth, "a") as fh:
                    fh.write(pubkey + "\n")
            if rate is not None and (rate if rate != "none" else None) != dev.rate:
                dev = _shape(name, rec, rate)
            differs = [
                f"{k}={have}"
                for k, have, want in (
                    ("loopback", dev.loopback, loopback),
                    ("python", dev.python, python),
                    ("disk_limit", dev.disk_limit, disk_limit),
                )
                if have != want
            ]
            if verbose:
                say(f"virtual device {name} is already running at {dev.target}")
                if differs:
                    say(f"  it runs with {', '.join(differs)}: stop it to change that")
            return dev
        if rec is not None and (rec.get("python"), rec.get("disk_limit")) != (python, disk_limit):
            raise EmulatorError(
                f"virtual device {name} exists with other settings "
                f"(python={rec.get('python')}, disk_limit={rec.get('disk_limit')})",
                hint=f"discard its disk first: edgekit device emulate stop --name {name} "
                "--purge, or choose another --name",
            )
        lower = build_rootfs(cache, verbose=verbose)
        if verbose:
            warn_old_qemu()
        t0 = time.monotonic()
        sd = _state_dir(name)
        sd.mkdir(parents=True, exist_ok=True)
        _teardown(name, sd, None)  # leftovers of a crash (mounts, netns)
        index = int(rec["index"]) if rec else _alloc_index(name)
        try:
            root, mode = _mount_root(sd, lower, disk_bytes, rootfs_mode)
            _configure_root(root, name, pubkey, loopback, python)
            _mount_dev(root)
            if model:
                _mount_board_model(root, model)
            limit_path = None
            if disk_bytes:
                limit_path = "/" if mode == "overlay" else DATA_DIR
                if mode == "copy":
                    _run(["mount", "-t", "tmpfs", "-o", f"size={disk_bytes},mode=755",
                          "ek-disk", str(root / DATA_DIR.lstrip("/"))])  # fmt: skip
            if loopback:
                if not _port_free(port):
                    raise EmulatorError(
                        f"port {port} on 127.0.0.1 is in use",
                        hint="choose another with --port",
                        port=port,
                    )
                netns = veth = host_ip = None
                addr, sport = "127.0.0.1", port
            else:
                link = _link(name, index).up()
                netns, veth, host_ip = link.netns, link.host_if, link.host_ip
                addr = str(link.dev_ip)
                sport = 22
            log = sd / "sshd.log"
            pid = _start_sshd(root, name, netns, addr, sport, log)
            _wait_ready(pid, addr, sport, log, timeout)
            hostkey = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            kh_host = addr if sport == 22 else f"[{addr}]:{sport}"
            kh_line = f"{kh_host} {hostkey[0]} {hostkey[1]}"
            kh_path = sd / "known_hosts"
            _write_atomic(kh_path, kh_line + "\n")
            stamp = _read_stamp(lower)
            pyver = {"system": stamp.get("python"), "none": None, "old": "3.7.3"}[python]
            dev = VirtualDevice(
                name=name,
                host=addr,
                port=sport,
                user="root",
                key_path=key_path,
                public_key_path=pubkey_path,
                known_hosts_path=kh_path,
                known_hosts_line=kh_line,
                host_key_fingerprint=_fingerprint(" ".join(hostkey)),
                netns=netns,
                veth=veth,
                host_address=host_ip,
                rootfs=root,
                state_dir=sd,
                sshd_pid=pid,
                python=python,
                python_version=pyver,
                disk_limit=disk_limit,
                disk_limit_path=limit_path,
                model=model,
            )
            record = {
                "index": index,
                "rootfs_mode": mode,
                "lower": str(lower),
                "python": python,
                "disk_limit": disk_limit,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": dev.to_dict(),
            }
            _save_record(name, record)
            if rate and rate != "none":
                dev = _shape(name, record, rate)
        except BaseException:
            with contextlib.suppress(Exception):
                _teardown(name, sd, None)
            raise
    if verbose:
        say(f"virtual device {name} started in {time.monotonic() - t0:.1f} s at {dev.target}")
    return dev


# ---------------------------------------------------------------------------------------------
# Shaping


def _shape(name: str, record: dict[str, Any], rate: str | None) -> VirtualDevice:
    dev = VirtualDevice.from_dict(record["device"])
    if dev.veth is None or dev.netns is None:
        raise EmulatorError(
            f"virtual device {name} runs on loopback: its bandwidth cannot be shaped",
            hint="start it in a network namespace (without --loopback)",
        )
    ShapedLink(dev.netns, host_if=dev.veth).shape(rate)
    dev = replace(dev, rate=None if rate == "none" else rate)
    record["device"] = dev.to_dict()
    _save_record(name, record)
    return dev


def shape(name: str = "pi0", rate: str | None = "10mbit") -> VirtualDevice:
    """Limit a running device's bandwidth both ways with ``tc tbf`` (``None`` removes it)."""
    _check_name(name)
    _require_root()
    with _locked(state_root() / ".lock"):
        rec = _load_record(name)
        if rec is None or not _sshd_alive(rec):
            raise EmulatorError(
                f"virtual device {name} is not running",
                hint=f"start it: edgekit device emulate start --name {name}",
            )
        return _shape(name, rec, rate)


# ---------------------------------------------------------------------------------------------
# Stopping


def _kill_all(root: Path, netns: str | None, extra: Sequence[int] = ()) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        pids = set(_device_pids(root, netns)) | {p for p in extra if _pid_alive(p)}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        alive = set(pids)
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            for pid in list(alive):
                _reap(pid)
                if not _pid_alive(pid):
                    alive.discard(pid)
        for pid in pids:
            _reap(pid)
    left = _device_pids(root, netns)
    if left:
        raise EmulatorError(f"processes {left} in the virtual device survived SIGKILL")


def _teardown(name: str, sd: Path, rec: dict[str, Any] | None) -> None:
    root = sd / "root"
    extra = [int(rec["device"]["sshd_pid"])] if rec else []
    _kill_all(root, _netns_name(name), extra)
    _unmount_all(root)
    _unmount_all(sd / "disk")
    _link(name).down()


def stop(name: str = "pi0", *, purge: bool = False) -> bool:
    """Stop a device: kill everything running in it, unmount, remove its netns and veth.

    The cached rootfs is never touched. The device's own disk (its overlay) is kept for the
    next start unless ``purge``. Returns whether the device was running.
    """
    _check_name(name)
    _require_root()
    with _locked(state_root() / ".lock"):
        sd = _state_dir(name)
        rec = _load_record(name)
        was_running = rec is not None and _sshd_alive(rec)
        if sd.exists():
            _teardown(name, sd, rec)
        else:
            _link(name).down()
        if purge:
            _remove_tree(sd)
        elif rec is not None:
            rec["stopped"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            _save_record(name, rec)
    return was_running
