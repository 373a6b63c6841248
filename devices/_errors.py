"""Errors of device operations. Each names the target and says what to do."""

from __future__ import annotations

from edgekit._errors import EdgekitError

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


class DeviceError(EdgekitError):
    """Something went wrong on or on the way to a device (``context['target']`` names it)."""


class ConnectError(DeviceError):
    """The device could not be reached or refused the login."""


class UnknownHostKeyError(ConnectError):
    """The device's host key is not in known_hosts (``context['fingerprint']``)."""


class HostKeyMismatchError(ConnectError):
    """The device's host key differs from the one known_hosts records."""


class ConnectionLostError(DeviceError):
    """The SSH link dropped in the middle of an operation."""


class RemoteCommandError(DeviceError):
    """A command on the device exited non-zero (``context['exit_code']``, ``['stderr']``)."""


class UnsupportedDeviceError(DeviceError):
    """The device lacks something edgekit needs (Python 3.9+, a wheel for its platform)."""


class DiskFullError(DeviceError):
    """The device has too little free disk for what is being sent."""


class PushError(DeviceError):
    """A push failed; the previous version stays current."""
