"""The background rootfs build's helpers (tests/_devices_fixtures.py): who gets it, and the
idle priority it runs at until the first device waits for it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from types import SimpleNamespace
from typing import Any

import _devices_fixtures as dev
import pytest


def _items(*fixturenames: str) -> list[Any]:
    return [SimpleNamespace(fixturenames=[name]) for name in fixturenames]


def test_only_sessions_that_start_a_device_want_the_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(dev.emu, "host_problem", lambda **kw: None)
    monkeypatch.setenv("EDGEKIT_EMULATOR_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("EDGEKIT_TESTS_PREBUILD", raising=False)
    assert dev._wants_prebuild(_items("tmp_path", "virtual_device"))
    assert dev._wants_prebuild(_items("virtual_device_tinydisk"))
    assert not dev._wants_prebuild(_items("ssh_config_file"))  # a closure without a device
    assert not dev._wants_prebuild(_items("digits_pkg", "device_key"))
    monkeypatch.setenv("EDGEKIT_TESTS_PREBUILD", "0")
    assert not dev._wants_prebuild(_items("virtual_device"))
    monkeypatch.setenv("EDGEKIT_TESTS_PREBUILD", "1")
    monkeypatch.setattr(dev.emu, "host_problem", lambda **kw: "not root")
    assert not dev._wants_prebuild(_items("virtual_device"))


@pytest.mark.skipif(
    not (shutil.which("chrt") and shutil.which("ionice")), reason="util-linux chrt/ionice"
)
def test_the_build_runs_idle_until_waited_for() -> None:
    proc = subprocess.Popen([*dev._idle_argv(), "sh", "-c", "sleep 30 & sleep 30; true"])
    try:
        for _ in range(100):  # the shell and its two sleeps
            pids = dev._descendants(proc.pid)
            if len(pids) == 3 and all(os.path.exists(f"/proc/{p}/exe") for p in pids):
                break
            time.sleep(0.05)
        assert len(pids) == 3, pids
        assert {os.sched_getscheduler(p) for p in pids} == {os.SCHED_IDLE}
        dev._to_normal_priority(proc.pid)
        assert {os.sched_getscheduler(p) for p in pids} == {os.SCHED_OTHER}
        io = subprocess.run(
            ["ionice", "-p", *map(str, pids)], capture_output=True, text=True, timeout=10
        )
        assert io.stdout.split("\n")[:3] == ["best-effort: prio 4"] * 3, io.stdout
    finally:
        for pid in reversed(dev._descendants(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        proc.wait(10)
