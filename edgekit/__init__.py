"""edgekit: deploy neural networks to edge devices as INT8 multi-exit packages.

The top-level names are loaded lazily so that ``import edgekit.runtime`` on a device
pulls in nothing heavier than numpy and one interpreter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ChecksumError,
    ConversionError,
    DatasetError,
    EdgekitError,
    MissingExtraError,
    ModelError,
    OutputExistsError,
    PackageError,
    SchemaVersionError,
)

__version__ = "0.1.0"

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
    "__version__",
    "convert",
    "load",
    "load_dataset",
    "read_manifest",
]

_LAZY = {
    "convert": ("edgekit.converters", "convert"),
    "load": ("edgekit.runtime", "load"),
    "load_dataset": ("edgekit.data", "load_dataset"),
    "read_manifest": ("edgekit._package", "read_manifest"),
}

if TYPE_CHECKING:
    from edgekit._package import read_manifest
    from edgekit.converters import convert
    from edgekit.data import load_dataset
    from edgekit.runtime import load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
