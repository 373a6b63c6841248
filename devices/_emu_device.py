"""The virtual device itself: ``start`` (a sequence of named steps), ``shape``, ``stop``.

Starting mounts the device's root, brings up its network, starts its sshd chrooted (an arm64
binary through binfmt_misc) and writes its record; stopping kills everything in it, unmounts
and takes the network down. Both hold the state lock (``state_root()/.lock``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from edgekit._progress import say

from ._emu_errors import EmulatorError, HostNotSupported
from ._emu_host import _require_root, host_problem, warn_old_qemu
from ._emu_keys import _fingerprint, _resolve_key
from ._emu_mounts import (
    _configure_root,
    _mount_board_model,
    _mount_dev,
    _mount_root,
    _remove_tree,
    _size_bytes,
    _unmount_all,
)
from ._emu_paths import (
    DATA_DIR,
    PYTHON_MODES,
    _check_name,
    _netns_name,
    _read_stamp,
    _state_dir,
    state_root,
)
from ._emu_records import VirtualDevice
from ._emu_rootfs import build_rootfs
from ._emu_state import (
    _alloc_index,
    _banner,
    _device_pids,
    _link,
    _load_record,
    _save_record,
    _sshd_alive,
)
from ._emu_sys import SYS_PATH, _locked, _pid_alive, _reap, _run, _write_atomic
from ._netns import ShapedLink, _rate_bits

__all__ = ["shape", "start", "stop"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_sshd(
    root: Path, name: str, link: ShapedLink | None, addr: str, port: int, log: Path
) -> int:
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
    argv = link.argv(*inner) if link else inner
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


@dataclass(frozen=True)
class _Spec:
    """What ``start`` was asked for, checked (see its arguments)."""

    name: str
    loopback: bool
    port: int
    rate: str | None
    python: str
    disk_limit: str | None
    disk_bytes: int | None
    model: str | None
    rootfs_mode: str
    timeout: float
    verbose: bool


class _Net(NamedTuple):
    """Where the device's sshd listens, and its link (None on loopback)."""

    link: ShapedLink | None
    addr: str
    port: int


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
    spec = _check_args(name, loopback, port, rate, python, disk_limit, model, rootfs_mode,
                       timeout, verbose)  # fmt: skip
    _check_host(loopback, cache)
    pubkey_path, key_path = _resolve_key(key, key_generate)
    pubkey = " ".join(pubkey_path.read_text().split()[:3])
    with _locked(state_root() / ".lock"):
        rec = _load_record(name)
        if rec is not None and _sshd_alive(rec):
            return _already_running(spec, rec, pubkey)
        _check_same_disk(spec, rec)
        lower = build_rootfs(cache, verbose=verbose)
        if verbose:
            warn_old_qemu()
        t0 = time.monotonic()
        dev = _boot(spec, rec, lower, pubkey, pubkey_path, key_path)
    if verbose:
        say(f"virtual device {name} started in {time.monotonic() - t0:.1f} s at {dev.target}")
    return dev


def _check_args(
    name: str,
    loopback: bool,
    port: int,
    rate: str | None,
    python: str,
    disk_limit: str | None,
    model: str | None,
    rootfs_mode: str,
    timeout: float,
    verbose: bool,
) -> _Spec:
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
    return _Spec(name, loopback, port, rate, python, disk_limit, disk_bytes, model, rootfs_mode,
                 timeout, verbose)  # fmt: skip


def _check_host(loopback: bool, cache: str | Path | None) -> None:
    _require_root()
    problem = host_problem(loopback=loopback, cache=cache)
    if problem:
        raise HostNotSupported(problem, reason="host")


def _already_running(spec: _Spec, rec: dict[str, Any], pubkey: str) -> VirtualDevice:
    """The running device, with ``pubkey`` authorized and the rate asked for."""
    dev = VirtualDevice.from_dict(rec["device"])
    auth = dev.rootfs / "root/.ssh/authorized_keys"
    if pubkey not in auth.read_text().splitlines():
        with open(auth, "a") as fh:
            fh.write(pubkey + "\n")
    rate = spec.rate
    if rate is not None and (rate if rate != "none" else None) != dev.rate:
        dev = _shape(spec.name, rec, rate)
    differs = [
        f"{k}={have}"
        for k, have, want in (
            ("loopback", dev.loopback, spec.loopback),
            ("python", dev.python, spec.python),
            ("disk_limit", dev.disk_limit, spec.disk_limit),
        )
        if have != want
    ]
    if spec.verbose:
        say(f"virtual device {spec.name} is already running at {dev.target}")
        if differs:
            say(f"  it runs with {', '.join(differs)}: stop it to change that")
    return dev


def _check_same_disk(spec: _Spec, rec: dict[str, Any] | None) -> None:
    """A kept disk was made for one python mode and disk limit: others need a purge."""
    if rec is not None and (rec.get("python"), rec.get("disk_limit")) != (
        spec.python,
        spec.disk_limit,
    ):
        raise EmulatorError(
            f"virtual device {spec.name} exists with other settings "
            f"(python={rec.get('python')}, disk_limit={rec.get('disk_limit')})",
            hint=f"discard its disk first: edgekit device emulate stop --name {spec.name} "
            "--purge, or choose another --name",
        )


def _boot(
    spec: _Spec,
    rec: dict[str, Any] | None,
    lower: Path,
    pubkey: str,
    pubkey_path: Path,
    key_path: Path | None,
) -> VirtualDevice:
    """Root, network, sshd, record, shaping; on any failure everything is undone."""
    name = spec.name
    sd = _state_dir(name)
    sd.mkdir(parents=True, exist_ok=True)
    _teardown(name, sd, None)  # leftovers of a crash (mounts, netns)
    index = int(rec["index"]) if rec else _alloc_index(name)
    try:
        root, mode, limit_path = _prepare_root(spec, sd, lower, pubkey)
        net = _bring_up_network(spec, index)
        log = sd / "sshd.log"
        pid = _start_sshd(root, name, net.link, net.addr, net.port, log)
        _wait_ready(pid, net.addr, net.port, log, spec.timeout)
        kh_path, kh_line, fingerprint = _write_known_hosts(root, sd, net)
        pyver = {"system": _read_stamp(lower).get("python"), "none": None, "old": "3.7.3"}
        dev = VirtualDevice(
            name=name,
            host=net.addr,
            port=net.port,
            user="root",
            key_path=key_path,
            public_key_path=pubkey_path,
            known_hosts_path=kh_path,
            known_hosts_line=kh_line,
            host_key_fingerprint=fingerprint,
            netns=net.link.netns if net.link else None,
            veth=net.link.host_if if net.link else None,
            host_address=net.link.host_ip if net.link else None,
            rootfs=root,
            state_dir=sd,
            sshd_pid=pid,
            python=spec.python,
            python_version=pyver[spec.python],
            disk_limit=spec.disk_limit,
            disk_limit_path=limit_path,
            model=spec.model,
        )
        record = {
            "index": index,
            "rootfs_mode": mode,
            "lower": str(lower),
            "python": spec.python,
            "disk_limit": spec.disk_limit,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": dev.to_dict(),
        }
        _save_record(name, record)
        if spec.rate and spec.rate != "none":
            dev = _shape(name, record, spec.rate)
    except BaseException:
        with contextlib.suppress(Exception):
            _teardown(name, sd, None)
        raise
    return dev


def _prepare_root(spec: _Spec, sd: Path, lower: Path, pubkey: str) -> tuple[Path, str, str | None]:
    """Mount and configure the device's root; returns (root, mode, where the disk limit is)."""
    root, mode = _mount_root(sd, lower, spec.disk_bytes, spec.rootfs_mode)
    _configure_root(root, spec.name, pubkey, spec.loopback, spec.python)
    _mount_dev(root)
    if spec.model:
        _mount_board_model(root, spec.model)
    limit_path = None
    if spec.disk_bytes:
        limit_path = "/" if mode == "overlay" else DATA_DIR
        if mode == "copy":
            _run(["mount", "-t", "tmpfs", "-o", f"size={spec.disk_bytes},mode=755",
                  "ek-disk", str(root / DATA_DIR.lstrip("/"))])  # fmt: skip
    return root, mode, limit_path


def _bring_up_network(spec: _Spec, index: int) -> _Net:
    """The device's own namespace and veth pair, or (loopback) a free port on 127.0.0.1."""
    if not spec.loopback:
        link = _link(spec.name, index).up()
        return _Net(link, str(link.dev_ip), 22)
    if not _port_free(spec.port):
        raise EmulatorError(
            f"port {spec.port} on 127.0.0.1 is in use",
            hint="choose another with --port",
            port=spec.port,
        )
    return _Net(None, "127.0.0.1", spec.port)


def _write_known_hosts(root: Path, sd: Path, net: _Net) -> tuple[Path, str, str]:
    """The device's own known_hosts file; returns (its path, its line, the fingerprint)."""
    hostkey = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    kh_host = net.addr if net.port == 22 else f"[{net.addr}]:{net.port}"
    kh_line = f"{kh_host} {hostkey[0]} {hostkey[1]}"
    kh_path = sd / "known_hosts"
    _write_atomic(kh_path, kh_line + "\n")
    return kh_path, kh_line, _fingerprint(" ".join(hostkey))


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
