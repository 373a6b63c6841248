"""Device state: records (``STATE/NAME/device.json``), network indexes, the processes that
run in a device, whether its sshd is alive and answers; ``status`` and ``list_devices``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from ._emu_errors import EmulatorError
from ._emu_paths import (
    _NAME_RE,
    _check_name,
    _net_prefix,
    _netns_name,
    _state_dir,
    _veth_name,
    state_root,
)
from ._emu_records import DeviceStatus, VirtualDevice
from ._emu_sys import _is_root, _pid_alive, _run, _write_atomic
from ._netns import ShapedLink

__all__ = ["list_devices", "status"]


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
