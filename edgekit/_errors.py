"""The edgekit exception hierarchy: one tree, every error an :class:`EdgekitError`.

Every error says what is wrong and, in ``hint``, what to do about it. Extra context
(a path, a shape, a target) is kept in ``context`` so callers can act on it without
parsing text. Each class keeps the builtin base it always had (``ValueError``...), so
``except ValueError`` callers still work. Public names, by where users import them:

    EdgekitError                                  edgekit
    ├── DatasetError                              edgekit
    ├── ModelError                                edgekit
    ├── ConversionError                           edgekit
    │   └── QATUnsupportedError                   edgekit.converters
    ├── OutputExistsError                         edgekit
    ├── PackageError                              edgekit
    │   ├── ChecksumError                         edgekit
    │   └── SchemaVersionError                    edgekit
    ├── MissingExtraError (ImportError)           edgekit
    ├── InputError (ValueError)                   edgekit.runtime
    ├── ModelClosedError (RuntimeError)           edgekit.runtime
    ├── StateError (ValueError)                   edgekit.runtime
    ├── ProtocolError (ValueError)                edgekit.serve
    ├── ServeError                                edgekit.serve
    ├── DeviceError                               edgekit.devices
    │   ├── ConnectError                          edgekit.devices
    │   │   ├── UnknownHostKeyError               edgekit.devices
    │   │   └── HostKeyMismatchError              edgekit.devices
    │   ├── ConnectionLostError                   edgekit.devices
    │   ├── RemoteCommandError                    edgekit.devices
    │   ├── UnsupportedDeviceError                edgekit.devices
    │   ├── DiskFullError                         edgekit.devices
    │   └── PushError                             edgekit.devices
    └── EmulatorError                             edgekit.devices
        └── HostNotSupported                      edgekit.devices

All are defined here except ``EmulatorError``/``HostNotSupported``, which live with the
virtual device (``edgekit.devices.emulate``). Two internal signals stay outside the tree
because they never reach a caller: ``edgekit.serve``'s batcher ``Closed`` (answered 503)
and the device agent's ``_Refused`` (printed as the agent's JSON error).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = [
    "ChecksumError",
    "ConnectError",
    "ConnectionLostError",
    "ConversionError",
    "DatasetError",
    "DeviceError",
    "DiskFullError",
    "EdgekitError",
    "HostKeyMismatchError",
    "InputError",
    "MissingExtraError",
    "ModelClosedError",
    "ModelError",
    "OutputExistsError",
    "PackageError",
    "ProtocolError",
    "PushError",
    "QATUnsupportedError",
    "RemoteCommandError",
    "SchemaVersionError",
    "ServeError",
    "StateError",
    "UnknownHostKeyError",
    "UnsupportedDeviceError",
    "require",
]


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose.

    ``message`` says what is wrong, ``hint`` (or None) what to do, ``context`` holds the
    facts (``path``, ``target``...) as keyword arguments given at the raise.
    """

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context = context
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


# -- core: datasets, models, conversion, packages -------------------------------------------


class DatasetError(EdgekitError):
    """A dataset is missing, unreadable, or the wrong shape for the task."""


class ModelError(EdgekitError):
    """A model file is not a usable Keras model, or an exit layer does not exist."""


class ConversionError(EdgekitError):
    """A step of the conversion (training, quantization, export) failed."""


class QATUnsupportedError(ConversionError):
    """tfmot cannot wrap some layer of the model; PTQ still can."""


class OutputExistsError(EdgekitError):
    """The output folder exists and ``force`` was not given."""


class PackageError(EdgekitError):
    """An edge package is missing files, corrupt, or malformed."""


class ChecksumError(PackageError):
    """A file in an edge package does not match the sha256 its manifest records."""


class SchemaVersionError(PackageError):
    """An edge package was written by a newer edgekit than this one."""


class MissingExtraError(EdgekitError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


# -- runtime ---------------------------------------------------------------------------------


class InputError(EdgekitError, ValueError):
    """An input of the wrong shape or dtype."""


class ModelClosedError(EdgekitError, RuntimeError):
    """``predict`` (or another inference call) on a model after ``close()``."""


class StateError(EdgekitError, ValueError):
    """A state file that cannot be trusted (its message says why)."""


# -- serving (the KServe v2 wire, the server) -----------------------------------------------


class ProtocolError(EdgekitError, ValueError):
    """A request or response that breaks the protocol; ``status`` is the HTTP status to answer."""

    def __init__(
        self, message: str, *, status: int = 400, hint: str | None = None, **context: Any
    ) -> None:
        super().__init__(message, hint=hint, **context)
        self.status = status


class ServeError(EdgekitError):
    """The server cannot start (bad option, busy port, unreadable certificate...)."""


# -- devices ---------------------------------------------------------------------------------


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


def require(module: str, extra: str, *, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" (needed for {purpose})" if purpose else ""
        raise MissingExtraError(
            f"the Python module {module!r} is not installed{what}",
            hint=f"pip install 'edgekit[{extra}]'",
            module=module,
            extra=extra,
        ) from exc
