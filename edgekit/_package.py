"""The edge package format: ``NAME.edgepkg/`` with ``manifest.json`` at its root.

This module is on the device's import path, so it uses only the standard library.
See DESIGN.md ("The edge package") for the layout and the stage contract.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ChecksumError, PackageError, SchemaVersionError

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "ExitSpec",
    "InputSpec",
    "Manifest",
    "QuantParams",
    "StageSpec",
    "TensorSpec",
    "file_sha256",
    "read_manifest",
    "write_manifest",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def as_dtype(self, dtype: str) -> QuantParams:
        """The same real grid in another 8-bit type (int8 <-> uint8 shifts the zero point)."""
        if dtype == self.dtype:
            return self
        shift = 128 if dtype == "uint8" else -128
        return QuantParams(self.scale, self.zero_point + shift, dtype)


@dataclass(frozen=True)
class TensorSpec:
    """Shape (batch dimension first, ``-1`` when free), dtype and quantization of a tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        q = d.get("quant")
        return cls(d["name"], tuple(d["shape"]), d["dtype"], QuantParams(**q) if q else None)


@dataclass(frozen=True)
class StageSpec:
    """Stage K: int8 features of stage K-1 (the image for K=0) -> (features_K, logits_K)."""

    index: int
    files: dict[str, str]
    input: TensorSpec
    logits: TensorSpec
    features: TensorSpec | None
    macs: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageSpec:
        feats = d.get("features")
        return cls(
            index=d["index"],
            files=dict(d["files"]),
            input=TensorSpec.from_dict(d["input"]),
            logits=TensorSpec.from_dict(d["logits"]),
            features=TensorSpec.from_dict(feats) if feats else None,
            macs=d["macs"],
        )


@dataclass(frozen=True)
class ExitSpec:
    """An exit: the classifier at the end of stage ``stage``, and what it costs and scores."""

    index: int
    stage: int
    layer: str
    macs: int
    macs_fraction: float
    accuracy: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExitSpec:
        return cls(
            **{k: d[k] for k in ("index", "stage", "layer", "macs", "macs_fraction")},
            accuracy=dict(d.get("accuracy", {})),
        )


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: a float image ``raw * scale + offset`` of ``shape`` (no batch)."""

    shape: tuple[int, ...]
    layout: str = "NHWC"
    scale: float = 1.0 / 255.0
    offset: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        return cls(
            tuple(d["shape"]),
            d.get("layout", "NHWC"),
            d.get("scale", 1 / 255),
            d.get("offset", 0.0),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` records about an edge package."""

    name: str
    labels: tuple[str, ...]
    input: InputSpec
    stages: tuple[StageSpec, ...]
    exits: tuple[ExitSpec, ...]
    full: dict[str, str]
    quantization: str
    onnx_activation_type: str | None
    tools: dict[str, str]
    task: str = "classification"
    split_points: tuple[int, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def formats(self) -> tuple[str, ...]:
        """Artifact formats every stage has (``tflite``, ``onnx``)."""
        return tuple(f for f in ("tflite", "onnx") if all(f in s.files for s in self.stages))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["formats"] = list(self.formats)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if not isinstance(d, Mapping):
            raise PackageError(
                "manifest.json does not hold a JSON object", hint="convert the model again"
            )
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise PackageError(
                "manifest.json has no integer schema_version",
                hint="the package is not an edge package, or is corrupt; convert it again",
            )
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the package has schema version {version}; this edgekit reads up to "
                f"{SCHEMA_VERSION}",
                hint="upgrade edgekit on this machine (pip install -U edgekit)",
                found=version,
                supported=SCHEMA_VERSION,
            )
        try:
            return cls(
                name=d["name"],
                task=d.get("task", "classification"),
                labels=tuple(d["labels"]),
                input=InputSpec.from_dict(d["input"]),
                stages=tuple(StageSpec.from_dict(s) for s in d["stages"]),
                exits=tuple(ExitSpec.from_dict(e) for e in d["exits"]),
                full=dict(d.get("full", {})),
                quantization=d["quantization"],
                onnx_activation_type=d.get("onnx_activation_type"),
                tools=dict(d.get("tools", {})),
                split_points=tuple(d.get("split_points", ())),
                files=dict(d.get("files", {})),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(
                f"manifest.json is malformed: {exc!r}", hint="convert the model again"
            ) from exc


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_files(root: Path) -> Iterator[str]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            yield p.relative_to(root).as_posix()


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Record the sha256 of every file under ``root`` and write ``manifest.json`` atomically."""
    files = {rel: file_sha256(root / rel) for rel in _package_files(root)}
    done = Manifest(**{**manifest.__dict__, "files": files})
    text = json.dumps(done.to_dict(), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, root / MANIFEST)
    return done


def read_manifest(root: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read ``root/manifest.json``; with ``verify``, check every file's sha256.

    Raises :class:`PackageError` (missing or malformed), :class:`ChecksumError` (a file
    differs from what was converted) or :class:`SchemaVersionError` (newer format).
    """
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise PackageError(
            f"{root} is not an edge package folder",
            hint="pass the NAME.edgepkg folder that `edgekit convert` wrote",
            path=str(root),
        )
    if not path.is_file():
        raise PackageError(
            f"{root} has no {MANIFEST}; the package is incomplete",
            hint="convert again; an interrupted convert never leaves a package that looks complete",
            path=str(root),
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(
            f"cannot read {path}: {exc}", hint="convert the model again", path=str(path)
        ) from exc
    manifest = Manifest.from_dict(data)
    if verify:
        for rel, digest in manifest.files.items():
            f = root / rel
            if not f.is_file():
                raise ChecksumError(
                    f"{rel} is listed in the manifest but missing from {root}",
                    hint="copy the whole package again",
                    path=str(f),
                )
            if file_sha256(f) != digest:
                raise ChecksumError(
                    f"{rel} does not match its sha256 in the manifest (corrupt or modified)",
                    hint="copy the package again from the machine that converted it",
                    path=str(f),
                )
    return manifest
