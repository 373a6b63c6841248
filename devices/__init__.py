"""edgekit.devices: push packages to devices over SSH, probe them, run and benchmark there.

    from edgekit.devices import push, probe, ConnectOptions, DeviceOptions
    results = push("fmnist.edgepkg", ["pi0", "pi@10.0.0.7"])   # {target: PushResult}
    results.failed                                             # the targets that failed
    probe("pi0").profile()                                     # backend, threads, format
    probe("pi@10.0.0.7", DeviceOptions(ConnectOptions(key_file="~/.ssh/pi")))

Connection settings (``ConnectOptions``) are apart from each operation's options
(``PushOptions`` for push and bench, ``DeviceOptions`` for probe/run/predict/deployments,
``RollbackOptions``); ``connect()`` makes a ``Connection`` from them.

``emulate`` starts a virtual arm64 Raspberry Pi to try all of it without hardware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit._public import load_lazy

if TYPE_CHECKING:
    from . import _emulator as emulate
    from ._connection import Connection, RunResult
    from ._emulator import EmulatorError, HostNotSupported, VirtualDevice
    from ._errors import (
        ConnectError,
        ConnectionLostError,
        DeviceError,
        DiskFullError,
        HostKeyMismatchError,
        PushError,
        RemoteCommandError,
        UnknownHostKeyError,
        UnsupportedDeviceError,
    )
    from ._ops import Deployment, deployments, rollback
    from ._ops import bench_on_device as bench
    from ._ops import predict_on_device as predict
    from ._ops import probe_device as probe
    from ._ops import run_on_device as run
    from ._options import ConnectOptions, DeviceOptions, RollbackOptions, connect
    from ._probe import DeviceInfo, Profile
    from ._push import GroupResult, PushOptions, PushResult, push
    from ._target import Target, parse_target

# Public name -> (private module, attribute or None for the module itself). Loaded on first
# use, so `import edgekit.devices` stays cheap (no paramiko until an SSH operation needs it).
_LAZY: dict[str, tuple[str, str | None]] = {
    "emulate": ("._emulator", None),
    "VirtualDevice": ("._emulator", "VirtualDevice"),
    "EmulatorError": ("._emulator", "EmulatorError"),
    "HostNotSupported": ("._emulator", "HostNotSupported"),
    "Connection": ("._connection", "Connection"),
    "RunResult": ("._connection", "RunResult"),
    "Target": ("._target", "Target"),
    "parse_target": ("._target", "parse_target"),
    "DeviceInfo": ("._probe", "DeviceInfo"),
    "Profile": ("._probe", "Profile"),
    "ConnectOptions": ("._options", "ConnectOptions"),
    "DeviceOptions": ("._options", "DeviceOptions"),
    "RollbackOptions": ("._options", "RollbackOptions"),
    "connect": ("._options", "connect"),
    "GroupResult": ("._push", "GroupResult"),
    "PushOptions": ("._push", "PushOptions"),
    "PushResult": ("._push", "PushResult"),
    "push": ("._push", "push"),
    "probe": ("._ops", "probe_device"),
    "run": ("._ops", "run_on_device"),
    "predict": ("._ops", "predict_on_device"),
    "bench": ("._ops", "bench_on_device"),
    "rollback": ("._ops", "rollback"),
    "deployments": ("._ops", "deployments"),
    "Deployment": ("._ops", "Deployment"),
    **{
        e: ("._errors", e)
        for e in (
            "ConnectError",
            "ConnectionLostError",
            "DeviceError",
            "DiskFullError",
            "HostKeyMismatchError",
            "PushError",
            "RemoteCommandError",
            "UnknownHostKeyError",
            "UnsupportedDeviceError",
        )
    },
}

__all__ = [
    "ConnectError",
    "ConnectOptions",
    "Connection",
    "ConnectionLostError",
    "Deployment",
    "DeviceError",
    "DeviceInfo",
    "DeviceOptions",
    "DiskFullError",
    "EmulatorError",
    "GroupResult",
    "HostKeyMismatchError",
    "HostNotSupported",
    "Profile",
    "PushError",
    "PushOptions",
    "PushResult",
    "RemoteCommandError",
    "RollbackOptions",
    "RunResult",
    "Target",
    "UnknownHostKeyError",
    "UnsupportedDeviceError",
    "VirtualDevice",
    "bench",
    "connect",
    "deployments",
    "emulate",
    "parse_target",
    "predict",
    "probe",
    "push",
    "rollback",
    "run",
]


def __getattr__(name: str) -> Any:
    return load_lazy(__name__, _LAZY, name)


# The errors (edgekit._errors, already imported) get their public __module__ now, so a
# traceback says edgekit.devices.PushError even before anyone asks for the name.
load_lazy(__name__, _LAZY, "DeviceError")
