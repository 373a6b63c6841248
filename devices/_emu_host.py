"""Host checks: root, binfmt_misc with a qemu-aarch64 handler (set up where it may be),
network namespaces, the tools; ``host_problem`` says in one line why a device cannot run."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from edgekit._progress import say

from ._emu_errors import HostNotSupported
from ._emu_paths import DEB_ARCH, SUITE, _rootfs_ready, cache_dir
from ._emu_sys import _is_root, _run

__all__ = ["ensure_binfmt", "host_problem", "qemu_version", "warn_old_qemu"]


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
