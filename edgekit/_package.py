"""The edge package format: ``NAME.edgepkg/`` with ``manifest.json`` at its root.

This module is on the device's import path, so it uses only the standard library.
See DESIGN.md ("The edge package") for the layout and the stage contract.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import stat as _stat
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
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
    "check_name",
    "check_package_path",
    "file_sha256",
    "package_file",
    "read_manifest",
    "write_manifest",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

#: A package name: a plain identifier, safe as one path segment on any device.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: One segment of a path inside a package (no ``..``, no hidden or odd names).
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=,-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 16 << 20
_MAX_DEPTH = 16  # path segments
_MAX_FILES = 10_000
_MAX_STAGES = 64
_MAX_LABELS = 100_000
_MAX_STR = 1024
_MAX_RANK = 8
_MAX_DIM = 1 << 20
_MAX_ELEMENTS = 1 << 28  # per tensor (batch excluded); a 16k x 16k RGB image is 2**29.6
_MAX_CHANNELS = 4096  # per-channel input normalisation values
_QUANT_DTYPES = ("int8", "uint8")
_HINT = "the package is corrupt or was not written by edgekit convert; convert it again"


def _bad(field_name: str, what: str) -> PackageError:
    return PackageError(f"manifest.json: {field_name} {what}", hint=_HINT, field=field_name)


def check_name(name: object, *, what: str = "package name") -> str:
    """Return ``name`` if it is a valid package name, else raise :class:`PackageError`.

    A name is 1-64 characters of ``A-Z a-z 0-9 . _ -`` and starts with a letter or digit,
    so it is one plain path segment everywhere (never ``..``, ``/`` or hidden).
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name)[:80]
        raise PackageError(
            f"{what} {shown} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            hint="pick another name (convert --name NAME)",
            field="name",
            name=shown,
        )
    return name


def check_package_path(rel: object, *, field_name: str = "path") -> str:
    """Return ``rel`` if it is a well-formed path inside a package, else raise.

    The rule: a relative POSIX path of at most 16 segments, each a plain name
    (letters, digits, ``_ . + @ = , -``, not starting with a dot), so it has no ``..``,
    no leading ``/``, no backslash and never names ``manifest.json`` itself.
    """
    if not isinstance(rel, str) or not 0 < len(rel) <= _MAX_STR:
        raise _bad(field_name, f"must be a relative path (a non-empty string), not {rel!r:.80}")
    parts = rel.split("/")
    if len(parts) > _MAX_DEPTH or not all(_SEGMENT_RE.fullmatch(p) for p in parts):
        raise _bad(
            field_name,
            f"{rel!r:.120} is not a plain relative path inside the package "
            "(absolute, '..', hidden or odd names are refused)",
        )
    if rel == MANIFEST:
        raise _bad(field_name, f"must not name {MANIFEST}")
    return rel


def package_file(root: str | os.PathLike[str], rel: str, *, must_exist: bool = True) -> Path:
    """``root/rel`` after checking that ``rel`` follows the path rule, that no symlink lies on
    the way and that it stays inside ``root``. Raises :class:`PackageError` (or
    :class:`ChecksumError` when ``must_exist`` and it is missing)."""
    check_package_path(rel)
    base = Path(root)
    cur = base
    parts = rel.split("/")
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = cur.lstat()
        except FileNotFoundError:
            if must_exist:
                raise ChecksumError(
                    f"{rel} is listed in the manifest but missing from {base}",
                    hint="copy the whole package again",
                    path=str(cur),
                ) from None
            return cur
        except OSError as exc:
            raise PackageError(f"cannot read {cur}: {exc}", hint=_HINT, path=str(cur)) from exc
        if _stat.S_ISLNK(st.st_mode):
            raise PackageError(
                f"{rel} in {base} goes through a symlink ({'/'.join(parts[: i + 1])}); "
                "packages may not contain symlinks",
                hint="copy the package with its files, not links (cp -rL), or convert again",
                path=str(cur),
            )
        last = i == len(parts) - 1
        if not last and not _stat.S_ISDIR(st.st_mode):
            raise PackageError(f"{rel}: {cur} is not a folder", hint=_HINT, path=str(cur))
        if last and not _stat.S_ISREG(st.st_mode):
            raise PackageError(f"{rel} in {base} is not a regular file", hint=_HINT, path=str(cur))
    real_root, real = os.path.realpath(base), os.path.realpath(cur)
    if os.path.commonpath([real_root, real]) != real_root:  # belt and braces
        raise PackageError(f"{rel} resolves outside {base}", hint=_HINT, path=str(cur))
    return cur


# -- typed reading of untrusted JSON -----------------------------------------------------


def _mapping(v: object, f: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(f, f"must be a JSON object, not {type(v).__name__}")
    return v


def _list(v: object, f: str, *, lo: int = 0, hi: int) -> list[Any]:
    if not isinstance(v, (list, tuple)):
        raise _bad(f, f"must be a JSON list, not {type(v).__name__}")
    if not lo <= len(v) <= hi:
        raise _bad(f, f"must have {lo} to {hi} entries, not {len(v)}")
    return list(v)


def _str(v: object, f: str, *, hi: int = _MAX_STR) -> str:
    if not isinstance(v, str):
        raise _bad(f, f"must be a string, not {type(v).__name__}")
    if len(v) > hi:
        raise _bad(f, f"is longer than {hi} characters")
    return v


def _int(v: object, f: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(f, f"must be an integer, not {type(v).__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _bad(f, f"must be between {lo} and {hi}, not {v if abs(v) < 10**20 else 'huge'}")
    return v


def _float(v: object, f: str, *, positive: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _bad(f, f"must be a number, not {type(v).__name__}")
    try:
        x = float(v)
    except OverflowError:
        raise _bad(f, "is too large") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise _bad(f, f"must be a finite {'positive ' if positive else ''}number, not {x}")
    return x


def _str_map(v: object, f: str, *, hi: int = 256) -> dict[str, str]:
    d = _mapping(v, f)
    if len(d) > hi:
        raise _bad(f, f"has more than {hi} entries")
    return {_str(k, f"{f} key"): _str(x, f"{f}[{k!r:.40}]") for k, x in d.items()}


def _shape(v: object, f: str, *, free: bool) -> tuple[int, ...]:
    dims = _list(v, f, lo=1, hi=_MAX_RANK)
    out = tuple(
        -1
        if free and d == -1 and not isinstance(d, bool)
        else _int(d, f"{f}[{i}]", lo=1, hi=_MAX_DIM)
        for i, d in enumerate(dims)
    )
    if math.prod(d for d in out if d > 0) > _MAX_ELEMENTS:
        raise _bad(f, f"{list(out)} has more than {_MAX_ELEMENTS} elements")
    return out


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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], f: str = "quant") -> QuantParams:
        d = _mapping(d, f)
        dtype = d.get("dtype", "int8")
        if dtype not in _QUANT_DTYPES:
            raise _bad(f"{f}.dtype", f"must be one of {_QUANT_DTYPES}, not {dtype!r:.40}")
        lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
        return cls(
            _float(d.get("scale"), f"{f}.scale", positive=True),
            _int(d.get("zero_point"), f"{f}.zero_point", lo=lo, hi=hi),
            dtype,
        )


@dataclass(frozen=True)
class TensorSpec:
    """Shape (batch dimension first, ``-1`` when free), dtype and quantization of a tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], f: str = "tensor") -> TensorSpec:
        d = _mapping(d, f)
        q = d.get("quant")
        return cls(
            _str(d.get("name"), f"{f}.name", hi=256),
            _shape(d.get("shape"), f"{f}.shape", free=True),
            _str(d.get("dtype"), f"{f}.dtype", hi=16),
            QuantParams.from_dict(q, f"{f}.quant") if q is not None else None,
        )


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
    def from_dict(cls, d: Mapping[str, Any], f: str = "stage") -> StageSpec:
        d = _mapping(d, f)
        feats = d.get("features")
        files = _str_map(d.get("files"), f"{f}.files", hi=16)
        for fmt, rel in files.items():
            check_package_path(rel, field_name=f"{f}.files[{fmt!r:.40}]")
        return cls(
            index=_int(d.get("index"), f"{f}.index", lo=0, hi=_MAX_STAGES),
            files=files,
            input=TensorSpec.from_dict(d.get("input"), f"{f}.input"),  # type: ignore[arg-type]
            logits=TensorSpec.from_dict(d.get("logits"), f"{f}.logits"),  # type: ignore[arg-type]
            features=TensorSpec.from_dict(feats, f"{f}.features") if feats is not None else None,
            macs=_int(d.get("macs"), f"{f}.macs", lo=0, hi=1 << 62),
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
    def from_dict(cls, d: Mapping[str, Any], f: str = "exit") -> ExitSpec:
        d = _mapping(d, f)
        acc = _mapping(d.get("accuracy", {}), f"{f}.accuracy")
        if len(acc) > 64:
            raise _bad(f"{f}.accuracy", "has more than 64 entries")
        return cls(
            index=_int(d.get("index"), f"{f}.index", lo=0, hi=_MAX_STAGES),
            stage=_int(d.get("stage"), f"{f}.stage", lo=0, hi=_MAX_STAGES),
            layer=_str(d.get("layer"), f"{f}.layer", hi=256),
            macs=_int(d.get("macs"), f"{f}.macs", lo=0, hi=1 << 62),
            macs_fraction=_float(d.get("macs_fraction"), f"{f}.macs_fraction"),
            accuracy={
                _str(k, f"{f}.accuracy key", hi=64): _float(v, f"{f}.accuracy[{k!r:.40}]")
                for k, v in acc.items()
            },
        )


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: a float image ``raw * scale + offset`` of ``shape`` (no batch)."""

    shape: tuple[int, ...]
    layout: str = "NHWC"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    # Per-channel ``(x - mean) / std`` the source model applies after ``raw * scale + offset``
    # (ONNX intake). Informational: stage 0 already contains it. Empty for Keras models.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], f: str = "input") -> InputSpec:
        d = _mapping(d, f)
        return cls(
            _shape(d.get("shape"), f"{f}.shape", free=False),
            _str(d.get("layout", "NHWC"), f"{f}.layout", hi=16),
            _float(d.get("scale", 1 / 255), f"{f}.scale", positive=True),
            _float(d.get("offset", 0.0), f"{f}.offset"),
            tuple(
                _float(v, f"{f}.mean[{i}]")
                for i, v in enumerate(_list(d.get("mean", []), f"{f}.mean", hi=_MAX_CHANNELS))
            ),
            tuple(
                _float(v, f"{f}.std[{i}]", positive=True)
                for i, v in enumerate(_list(d.get("std", []), f"{f}.std", hi=_MAX_CHANNELS))
            ),
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
    files: dict[str, str] = field(default_factory=dict)
    # Accelerator target -> what the package still needs there (e.g. "coral": needs
    # edgetpu_compiler), or how its files differ (e.g. "jetson": symmetric ONNX).
    targets: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # sha256 of the manifest.json bytes this was read from (or written as); "" for a
    # Manifest built in memory. Not part of the file: it is the file's own digest.
    sha256: str = field(default="", compare=False)

    @property
    def split_points(self) -> tuple[int, ...]:
        """Where a run can be cut: after stage ``k`` for ``k`` in ``1..len(stages)-1``
        (the runtime's ``split`` values)."""
        return tuple(range(1, len(self.stages)))

    @property
    def formats(self) -> tuple[str, ...]:
        """Artifact formats every stage has (``tflite``, ``onnx``)."""
        return tuple(f for f in ("tflite", "onnx") if all(f in s.files for s in self.stages))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["sha256"]
        d["formats"] = list(self.formats)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Build a manifest from untrusted JSON, checking every type, range and path.

        Raises :class:`PackageError` naming the field that is wrong (never another
        exception), or :class:`SchemaVersionError` for a newer format.
        """
        if not isinstance(d, Mapping):
            raise PackageError(
                "manifest.json does not hold a JSON object", hint="convert the model again"
            )
        version = d.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PackageError(
                f"manifest.json has no valid schema_version (a positive integer), "
                f"found {version!r:.40}",
                hint="the package is not an edge package, or is corrupt; convert it again",
                field="schema_version",
            )
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the package has schema version {version}; this edgekit reads up to "
                f"{SCHEMA_VERSION}",
                hint="upgrade edgekit on this machine (pip install -U edgekit)",
                found=version,
                supported=SCHEMA_VERSION,
            )
        if "name" not in d:
            raise _bad("name", "is missing")
        name = check_name(d["name"])
        stages = tuple(
            StageSpec.from_dict(s, f"stages[{i}]")
            for i, s in enumerate(_list(d.get("stages"), "stages", lo=1, hi=_MAX_STAGES))
        )
        for i, s in enumerate(stages):
            if s.index != i:
                raise _bad(f"stages[{i}].index", f"must be {i}, not {s.index}")
        exits = tuple(
            ExitSpec.from_dict(e, f"exits[{i}]")
            for i, e in enumerate(_list(d.get("exits"), "exits", lo=1, hi=_MAX_STAGES))
        )
        for i, e in enumerate(exits):
            if e.stage >= len(stages):
                raise _bad(f"exits[{i}].stage", f"{e.stage} names no stage")
        labels = tuple(
            _str(x, f"labels[{i}]", hi=256)
            for i, x in enumerate(_list(d.get("labels"), "labels", hi=_MAX_LABELS))
        )
        full = _str_map(d.get("full", {}), "full", hi=16)
        for k, rel in full.items():
            check_package_path(rel, field_name=f"full[{k!r:.40}]")
        files = _mapping(d.get("files", {}), "files")
        if len(files) > _MAX_FILES:
            raise _bad("files", f"lists more than {_MAX_FILES} files")
        for rel, digest in files.items():
            check_package_path(rel, field_name="files key")
            if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
                raise _bad(f"files[{rel!r:.80}]", "must be a sha256 (64 lowercase hex digits)")
        for rel in files:  # a file cannot also be a folder of another
            parts = rel.split("/")
            for j in range(1, len(parts)):
                if "/".join(parts[:j]) in files:
                    raise _bad(f"files key {rel!r:.80}", "lies under another listed file")
        named = [(f"stages[{s.index}].files[{k!r}]", r) for s in stages for k, r in s.files.items()]
        named += [(f"full[{k!r}]", r) for k, r in full.items()]
        for where, rel in named:
            if rel not in files:
                raise _bad(where, f"{rel!r} is not listed with its sha256 in files")
        # Older packages wrote split_points; it is derived from the stages now, but a
        # present value is still checked so a crafted one cannot pass unseen.
        for i, p in enumerate(_list(d.get("split_points", []), "split_points", hi=_MAX_STAGES)):
            _int(p, f"split_points[{i}]", lo=0, hi=len(stages))
        onnx_act = d.get("onnx_activation_type")
        return cls(
            name=name,
            task=_str(d.get("task", "classification"), "task", hi=64),
            labels=labels,
            input=InputSpec.from_dict(d.get("input"), "input"),  # type: ignore[arg-type]
            stages=stages,
            exits=exits,
            full=full,
            quantization=_str(d.get("quantization"), "quantization", hi=64),
            onnx_activation_type=(
                None if onnx_act is None else _str(onnx_act, "onnx_activation_type", hi=16)
            ),
            tools=_str_map(d.get("tools", {}), "tools"),
            files=dict(files),
            targets=_str_map(d.get("targets", {}), "targets", hi=8),
            schema_version=version,
        )


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_files(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for n in sorted(dirnames + filenames):
            p = here / n
            if p.is_symlink():
                raise PackageError(
                    f"{p} is a symlink; a package holds only its own files",
                    hint="copy the file into the package instead of linking it",
                    path=str(p),
                )
        dirnames.sort()
        for n in sorted(filenames):
            rel = (here / n).relative_to(root).as_posix()
            if rel != MANIFEST and not n.startswith(".manifest."):
                yield check_package_path(rel, field_name="file")


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Record the sha256 of every file under ``root`` and write ``manifest.json`` atomically.

    The manifest is checked against the package rule first (name, paths, checksums listed),
    and written with the usual file mode (0666 less the umask), like the other files.
    """
    check_name(manifest.name)
    files = {rel: file_sha256(root / rel) for rel in _package_files(root)}
    done = Manifest(**{**manifest.__dict__, "files": files})
    text = json.dumps(done.to_dict(), indent=2, sort_keys=False) + "\n"
    Manifest.from_dict(json.loads(text))  # the same rule every reader applies
    done = replace(done, sha256=hashlib.sha256(text.encode()).hexdigest())
    tmp = root / f".manifest.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return done


def read_manifest(root: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read ``root/manifest.json``, apply the package rule; with ``verify``, check every
    file's sha256.

    The rule (always applied): a valid name, every path relative, free of ``..`` and
    symlinks, inside the package and listed with its sha256. Raises :class:`PackageError`
    (missing, malformed or breaking the rule), :class:`ChecksumError` (a file differs from
    what was converted) or :class:`SchemaVersionError` (newer format).
    """
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise PackageError(
            f"{root} is not an edge package folder",
            hint="pass the NAME.edgepkg folder that `edgekit convert` wrote",
            path=str(root),
        )
    if path.is_symlink() or not path.is_file():
        raise PackageError(
            f"{root} has no {MANIFEST}; the package is incomplete",
            hint="convert again; an interrupted convert never leaves a package that looks complete",
            path=str(root),
        )
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise PackageError(
                f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB", hint=_HINT, path=str(path)
            )
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:
        raise PackageError(
            f"cannot read {path}: {str(exc)[:200]}", hint="convert the model again", path=str(path)
        ) from None
    manifest = replace(Manifest.from_dict(data), sha256=hashlib.sha256(raw).hexdigest())
    for rel, digest in manifest.files.items():
        f = package_file(root, rel, must_exist=verify)
        if verify and file_sha256(f) != digest:
            raise ChecksumError(
                f"{rel} does not match its sha256 in the manifest (corrupt or modified)",
                hint="copy the package again from the machine that converted it",
                path=str(f),
            )
    return manifest
