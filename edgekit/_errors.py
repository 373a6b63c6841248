"""The edgekit exception hierarchy.

Every error says what is wrong and, in ``hint``, what to do about it. Extra context
(a path, a shape) is kept as attributes so callers can act on it without parsing text.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = [
    "ChecksumError",
    "ConversionError",
    "DatasetError",
    "EdgekitError",
    "MissingExtraError",
    "ModelError",
    "OutputExistsError",
    "PackageError",
    "SchemaVersionError",
    "require",
]


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context = context
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class DatasetError(EdgekitError):
    """A dataset is missing, unreadable, or the wrong shape for the task."""


class ModelError(EdgekitError):
    """A model file is not a usable Keras model, or an exit layer does not exist."""


class ConversionError(EdgekitError):
    """A step of the conversion (training, quantization, export) failed."""


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
