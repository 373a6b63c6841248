"""A device's own root: an overlay of the cached rootfs (or a copy), an optional size limit
(tmpfs), a private /dev, /proc, a read-only /sys, a board model, and what start writes into
it (host key, authorized_keys, hostname, no resolver, the python mode). Also unmounting and a
removal that never crosses into a mount."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from edgekit._progress import say

from ._emu_errors import EmulatorError, HostNotSupported
from ._emu_paths import ARCH, DATA_DIR
from ._emu_sys import _run, _write_atomic

__all__: list[str] = []


_SIZE_RE = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
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


def _mount_board_model(root: Path, model: str) -> None:
    """A device tree with just ``model`` at /sys/firmware/devicetree/base, as on a Pi."""
    fw = root / "sys" / "firmware"
    _run(["mount", "-t", "tmpfs", "-o", "mode=755,size=64k", "ek-fw", str(fw)])
    base = fw / "devicetree" / "base"
    base.mkdir(parents=True)
    (base / "model").write_bytes(model.encode() + b"\0")
    _run(["mount", "-o", "remount,ro", str(fw)])


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
