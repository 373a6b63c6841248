"""edgekit.devices: push packages to devices over SSH, probe them, run and benchmark there.

    from edgekit.devices import push, probe
    results = push("fmnist.edgepkg", ["pi0", "pi@10.0.0.7"])   # {target: PushResult}
    probe("pi0").profile()                                     # backend, threads, format

``emulate`` starts a virtual arm64 Raspberry Pi to try all of it without hardware.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import _emulator as emulate
    from ._connection import Connection, RunResult
    from ._emulator import VirtualDevice
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
    from ._probe import DeviceInfo, Profile
    from ._push import PushOptions, PushResult, push
    from ._target import Target, parse_target

# Public name -> (private module, attribute or None for the module itself). Loaded on first
# use, so `import edgekit.devices` stays cheap (no paramiko until an SSH operation needs it).
_LAZY: dict[str, tuple[str, str | None]] = {
    "emulate": ("._emulator", None),
    "VirtualDevice": ("._emulator", "VirtualDevice"),
    "Connection": ("._connection", "Connection"),
    "RunResult": ("._connection", "RunResult"),
    "Target": ("._target", "Target"),
    "parse_target": ("._target", "parse_target"),
    "DeviceInfo": ("._probe", "DeviceInfo"),
    "Profile": ("._probe", "Profile"),
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
    "Connection",
    "ConnectionLostError",
    "Deployment",
    "DeviceError",
    "DeviceInfo",
    "DiskFullError",
    "HostKeyMismatchError",
    "Profile",
    "PushError",
    "PushOptions",
    "PushResult",
    "RemoteCommandError",
    "RunResult",
    "Target",
    "UnknownHostKeyError",
    "UnsupportedDeviceError",
    "VirtualDevice",
    "bench",
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
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = importlib.import_module(module, __name__)
    return mod if attr is None else getattr(mod, attr)
