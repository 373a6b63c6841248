"""Errors of device operations. Each names the target and says what to do.

Defined with the rest of the tree in :mod:`edgekit._errors`; imported from here too.
"""

from __future__ import annotations

from edgekit._errors import (
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

__all__ = [
    "ConnectError",
    "ConnectionLostError",
    "DeviceError",
    "DiskFullError",
    "HostKeyMismatchError",
    "PushError",
    "RemoteCommandError",
    "UnknownHostKeyError",
    "UnsupportedDeviceError",
]
