"""Pytest fixtures for the virtual arm64 device (loaded by conftest.py's ``pytest_plugins``).

``virtual_device`` and ``virtual_device2`` are two devices started once per session (the first
one builds the cached rootfs: minutes, once per machine). The fault devices (no Python, an old
Python, a tiny disk) start only for the modules that ask for them.

Where the emulator cannot run (not root, no binfmt_misc/qemu, no debootstrap, no network
namespaces) the tests that need it skip with the reason; under CI (``CI=true``) the skip rule in
conftest.py fails them instead.
Every device started here is stopped and purged at the end, also when tests fail (fixture
finalizers, and an atexit hook for a session that dies before they run).

When the collected tests need a device and the rootfs is not cached yet, its build starts in
the background as soon as collection ends (``edgekit device emulate build`` at the idle CPU and
I/O priority, in its own process so the tests' monkeypatches cannot reach it): its downloads
and its arm64 package setup use what the tests before the first device leave idle; the first
device waits for the rest, with the build back at the normal priority.
``EDGEKIT_TESTS_PREBUILD=0`` turns that off (the first device then builds it, as before).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
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


# -- the rootfs, built in the background while the first tests run --------------------------

#: The fixtures that start a device (the rootfs build is for the sessions that use one). A
#: test's ``fixturenames`` is the closure, so ``ssh_config_file`` brings ``virtual_device`` in;
#: test_devices_ssh.py's own ``ssh_config_file`` (the host's sshd) does not.
_DEVICE_FIXTURES = frozenset(DEVICE_NAMES)
#: How long the first device waits for the background build before it gives up on it.
PREBUILD_WAIT_S = 1800.0


class _Prebuild:
    """The background ``edgekit device emulate build`` of this session (at most one)."""

    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started = 0.0


def _wants_prebuild(items: list[pytest.Item]) -> bool:
    if os.environ.get("EDGEKIT_TESTS_PREBUILD", "1") == "0":
        return False
    if not any(_DEVICE_FIXTURES.intersection(getattr(i, "fixturenames", ())) for i in items):
        return False
    if emu.host_problem() is not None:  # the fixtures skip (or fail under CI) with the reason
        return False
    return not emu._rootfs_ready(emu.cache_dir() / f"{emu.SUITE}-{emu.DEB_ARCH}")


def _idle_argv() -> list[str]:
    """Run at the idle priority: CPU and disk only when nothing else wants them (SCHED_IDLE,
    the idle I/O class), so the tests in the foreground never wait for the build; a plain
    ``nice -n 19`` where util-linux's ``chrt``/``ionice`` are missing."""
    if shutil.which("chrt") and shutil.which("ionice"):
        return ["chrt", "--idle", "0", "ionice", "-c", "3"]
    return ["nice", "-n", "19"]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or _Prebuild.proc is not None:
        return
    if not _wants_prebuild(session.items):
        return
    tmp = session.config._tmp_path_factory  # type: ignore[attr-defined]  # tmp_path_factory's
    log = Path(tmp.getbasetemp()) / "rootfs-prebuild.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        _Prebuild.proc = subprocess.Popen(
            [*_idle_argv(), sys.executable, "-m", "edgekit", "device", "emulate", "build"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _Prebuild.log, _Prebuild.started = log, time.monotonic()


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc's parent links)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [root], [root]
    while todo:
        pid = todo.pop()
        kids = [c for c, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    return found


def _to_normal_priority(root: int) -> None:
    """Back to the normal CPU and I/O priority, for the build that the tests now wait for
    (on a loaded machine an idle-priority build would hardly move)."""
    for _ in range(2):  # the second pass catches children forked during the first
        pids = _descendants(root)
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
                with contextlib.suppress(OSError):  # exited meanwhile
                    os.sched_setscheduler(int(task.name), os.SCHED_OTHER, os.sched_param(0))
        if shutil.which("ionice"):
            subprocess.run(
                ["ionice", "-c", "2", "-n", "4", "-p", *map(str, pids)],
                capture_output=True,
                timeout=60,
            )


def wait_prebuild() -> None:
    """Wait for the background rootfs build, if one runs. Whether it worked or not, the caller
    goes on to ``emu.start``: it finds the rootfs cached, or builds it and raises its error."""
    proc = _Prebuild.proc
    if proc is None or proc.poll() is not None:
        return
    t0 = time.monotonic()
    _to_normal_priority(proc.pid)
    try:
        proc.wait(PREBUILD_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()  # the foreground build below takes the cache lock once it is gone
        proc.wait(60)
    print(
        f"rootfs background build: exit {proc.returncode} after "
        f"{time.monotonic() - _Prebuild.started:.0f} s, waited {time.monotonic() - t0:.0f} s "
        f"for it (log: {_Prebuild.log})"
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A build still running (the session stopped early) is waited for: killed half-way it
    would leave its mounts behind; finished, it leaves a cached rootfs for the next run. (On
    Ctrl-C it has the SIGINT too, being in pytest's process group, and stops on its own.)"""
    wait_prebuild()


def start_device(name: str, key: Path, **options: Any) -> VirtualDevice:
    """Start a fresh device ``name`` (stale test devices of dead sessions are purged first)."""
    require_emulator(loopback=bool(options.get("loopback")))
    wait_prebuild()
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
