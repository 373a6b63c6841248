"""Pytest fixtures for the virtual arm64 device (loaded by conftest.py's ``pytest_plugins``).

``virtual_device`` and ``virtual_device2`` are two devices started once per session (the first
one builds the cached rootfs: minutes, once per machine). The fault devices (no Python, an old
Python, a tiny disk) start only for the modules that ask for them.

Where the emulator cannot run (not root, no binfmt_misc/qemu, no debootstrap, no network
namespaces) the tests that need it skip with the reason; under CI (``CI=true``) the skip rule in
conftest.py fails them instead.
Every device started here is stopped and purged at the end, also when tests fail (fixture
finalizers, and an atexit hook for a session that dies before they run).
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.devices import VirtualDevice
from edgekit.devices import emulate as emu


def device_name(suffix: str) -> str:
    """This session's name for a test device: ``t<pid>-<suffix>``.

    Distinct from what people start by hand (pi0...) and from another pytest session's devices
    on the same machine, so neither is ever stopped by these tests.
    """
    return f"t{os.getpid()}-{suffix}"


DEVICE_NAMES = {
    "virtual_device": device_name("p0"),
    "virtual_device2": device_name("p1"),
    "virtual_device_nopython": device_name("np"),
    "virtual_device_oldpython": device_name("op"),
    "virtual_device_tinydisk": device_name("dk"),
}
#: Size of ``virtual_device_tinydisk``'s whole writable disk (``/`` including /opt/edgekit).
TINY_DISK = "48M"

_started: set[str] = set()


def _stop_all_started() -> None:
    for name in list(_started):
        try:
            emu.stop(name, purge=True)
        except Exception as exc:  # atexit must try every device
            print(f"edgekit tests: could not stop virtual device {name}: {exc}")
        _started.discard(name)


atexit.register(_stop_all_started)


def unavailable(reason: str) -> None:
    """Skip with ``reason`` (under CI, where the virtual device must run, the skip rule in
    conftest.py makes it a failure)."""
    pytest.skip(f"virtual device unavailable: {reason}")


def require_emulator(*, loopback: bool = False) -> None:
    """Skip/fail unless this machine can run a virtual device."""
    problem = emu.host_problem(loopback=loopback)
    if problem:
        unavailable(problem)


def _purge_stale_sessions() -> None:
    """Remove test devices left by pytest sessions that died without stopping them."""
    for st in emu.list_devices(probe=False):
        m = re.fullmatch(r"t(\d+)-\w+", st.name)
        if m and int(m.group(1)) != os.getpid() and not Path(f"/proc/{m.group(1)}").exists():
            emu.stop(st.name, purge=True)


def start_device(name: str, key: Path, **options: Any) -> VirtualDevice:
    """Start a fresh device ``name`` (stale test devices of dead sessions are purged first)."""
    require_emulator(loopback=bool(options.get("loopback")))
    if not _started:
        _purge_stale_sessions()
    emu.stop(name, purge=True)
    _started.add(name)
    try:
        return emu.start(name, key=key, **options)
    except emu.HostNotSupported as exc:
        unavailable(exc.message)
        raise  # unreachable: unavailable() raises


def stop_device(name: str) -> None:
    emu.stop(name, purge=True)
    _started.discard(name)


@pytest.fixture(scope="session")
def device_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test ED25519 key pair (private key path; the public key is beside it as .pub)."""
    key = tmp_path_factory.mktemp("device-key") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-tests", "-f", str(key)],
        check=True,
        timeout=600,
    )
    return key


@pytest.fixture(scope="session")
def virtual_device(device_key: Path) -> Iterator[VirtualDevice]:
    """The virtual Raspberry Pi (arm64, Python 3.11) in its own netns, for the whole session."""
    name = DEVICE_NAMES["virtual_device"]
    yield start_device(name, device_key)
    stop_device(name)


@pytest.fixture(scope="session")
def virtual_device2(device_key: Path) -> Iterator[VirtualDevice]:
    """A second virtual device (fleet tests), with its own disk, netns and host key."""
    name = DEVICE_NAMES["virtual_device2"]
    yield start_device(name, device_key)
    stop_device(name)


@pytest.fixture(scope="session")
def device_known_hosts(
    tmp_path_factory: pytest.TempPathFactory,
    virtual_device: VirtualDevice,
    virtual_device2: VirtualDevice,
) -> Path:
    """A known_hosts file with both session devices' host keys."""
    path = tmp_path_factory.mktemp("ssh") / "known_hosts"
    path.write_text(f"{virtual_device.known_hosts_line}\n{virtual_device2.known_hosts_line}\n")
    return path


@pytest.fixture(scope="session")
def ssh_config_file(
    device_known_hosts: Path, virtual_device: VirtualDevice, virtual_device2: VirtualDevice
) -> Path:
    """An ssh config file with aliases ``pi0`` and ``pi1`` for the two session devices."""
    path = device_known_hosts.parent / "config"
    for alias, dev in (("pi0", virtual_device), ("pi1", virtual_device2)):
        dev.write_ssh_config(path, alias=alias)
    text = path.read_text().replace(
        f"UserKnownHostsFile {virtual_device.known_hosts_path}",
        f"UserKnownHostsFile {device_known_hosts}",
    )
    text = text.replace(
        f"UserKnownHostsFile {virtual_device2.known_hosts_path}",
        f"UserKnownHostsFile {device_known_hosts}",
    )
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def virtual_device_nopython(device_key: Path) -> Iterator[VirtualDevice]:
    """A device without python3 (for the 'device without Python 3.9+' fault)."""
    name = DEVICE_NAMES["virtual_device_nopython"]
    yield start_device(name, device_key, python="none")
    stop_device(name)


@pytest.fixture(scope="module")
def virtual_device_oldpython(device_key: Path) -> Iterator[VirtualDevice]:
    """A device whose python3 reports 3.7.3 (``-V``, ``sys.version_info``, ``platform``)."""
    name = DEVICE_NAMES["virtual_device_oldpython"]
    yield start_device(name, device_key, python="old")
    stop_device(name)


@pytest.fixture(scope="module")
def virtual_device_tinydisk(device_key: Path) -> Iterator[VirtualDevice]:
    """A device whose whole writable disk is ``TINY_DISK`` (writes fail with ENOSPC beyond)."""
    name = DEVICE_NAMES["virtual_device_tinydisk"]
    yield start_device(name, device_key, disk_limit=TINY_DISK)
    stop_device(name)
