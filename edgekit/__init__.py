"""edgekit: deploy neural networks to edge devices as INT8 multi-exit packages.

The top-level names are loaded lazily so that ``import edgekit.runtime`` on a device
pulls in nothing heavier than numpy and one interpreter. Every error edgekit raises is an
:class:`EdgekitError`; the tree is drawn in ``edgekit._errors`` and ARCHITECTURE.md.
"""

from __future__ import annotations

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
from ._public import load_lazy, publish

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "ConversionError",
    "DatasetError",
    "EdgeModel",
    "EdgekitError",
    "MissingExtraError",
    "ModelError",
    "OutputExistsError",
    "PackageError",
    "Prediction",
    "SchemaVersionError",
    "__version__",
    "convert",
    "load",
    "load_dataset",
    "read_manifest",
]

_LAZY: dict[str, tuple[str, str | None]] = {
    "EdgeModel": ("edgekit.runtime", "EdgeModel"),
    "Prediction": ("edgekit.runtime", "Prediction"),
    "convert": ("edgekit.converters", "convert"),
    "load": ("edgekit.runtime", "load"),
    "load_dataset": ("edgekit.data", "load_dataset"),
    "read_manifest": ("edgekit._package", "read_manifest"),
}

if TYPE_CHECKING:
    from edgekit._package import read_manifest
    from edgekit.converters import convert
    from edgekit.data import load_dataset
    from edgekit.runtime import EdgeModel, Prediction, load


publish(globals())


def __getattr__(name: str) -> Any:
    value = load_lazy(__name__, _LAZY, name)
    globals()[name] = value
    return value
