"""The cached root filesystem: Debian bookworm arm64 built once with debootstrap, in a
temporary folder renamed into place when complete (a half-built one is never used), stamped
with its recipe so another recipe rebuilds it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from edgekit._progress import Progress, say

from ._emu_errors import EmulatorError, HostNotSupported
from ._emu_host import _require_root, ensure_binfmt
from ._emu_mounts import _remove_tree
from ._emu_paths import (
    DEB_ARCH,
    DEFAULT_MIRROR,
    PACKAGES,
    RECIPE,
    STAMP,
    SUITE,
    _rootfs_ready,
    cache_dir,
)
from ._emu_state import list_devices
from ._emu_sys import _locked, _run

__all__ = ["build_rootfs"]


# Lines debootstrap prints for this recipe (measured), for a progress bar with an ETA.
_DEBOOTSTRAP_LINES = 625


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
