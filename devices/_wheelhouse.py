"""Wheelhouses: everything a device's environment installs, fetched on the host.

Devices are often offline, so the host downloads wheels for the device's platform and
Python (``pip download --platform ... --python-version ...``, exact manylinux tags) and
builds edgekit's own wheel from the modules it is running. The device then installs
with ``pip install --no-index``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgekit._package import file_sha256
from edgekit._progress import say

from ._errors import UnsupportedDeviceError
from ._probe import DeviceInfo, Profile

__all__ = ["Wheelhouse", "build_wheelhouse", "cache_dir", "edgekit_wheel", "platform_tags"]

# The subpackages a device gets (converters and serve are host-side, but cost nothing).
_PACKAGES = (
    "edgekit",
    "edgekit.runtime",
    "edgekit.runtime.backends",
    "edgekit.devices",
    "edgekit.evaluate",  # the device agent's bench (numpy only)
    "edgekit.serve",
)
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def cache_dir() -> Path:
    """``$EDGEKIT_CACHE`` or ``~/.cache/edgekit``."""
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


@dataclass(frozen=True)
class Wheelhouse:
    """Wheels for one device platform, and what to install from them."""

    wheels: tuple[Path, ...]
    requirements: tuple[str, ...]
    python: str  # "3.11"
    platform: str  # "manylinux_2_36_aarch64"

    @property
    def size(self) -> int:
        return sum(w.stat().st_size for w in self.wheels)

    @property
    def key(self) -> str:
        """Names the device environment these wheels make (same wheels, same key)."""
        h = hashlib.sha256(self.python.encode())
        for w in sorted(self.wheels, key=lambda p: p.name):
            h.update(w.name.encode())
            h.update(file_sha256(w).encode())
        return h.hexdigest()[:12]


def platform_tags(arch: str, glibc: tuple[int, int]) -> list[str]:
    """pip ``--platform`` tags a device with this arch and glibc accepts, newest first."""
    arch = {"arm64": "aarch64", "armv8l": "armv7l", "amd64": "x86_64"}.get(arch, arch)
    major, minor = glibc
    if major != 2 or minor < 17:
        raise UnsupportedDeviceError(
            f"glibc {major}.{minor} on {arch}: edgekit's wheels need glibc 2.17 or newer",
            hint="use a newer OS image on the device",
        )
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    return tags


_sources: list[tuple[str, bytes]] = []


def _edgekit_sources() -> list[tuple[str, bytes]]:
    """The modules' sources, read once per process: every push of a run sends the same
    code, even if the files change on disk meanwhile."""
    if _sources:
        return list(_sources)
    files: list[tuple[str, bytes]] = []
    for name in _PACKAGES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        folder = Path(next(iter(mod.__path__)))
        prefix = name.replace(".", "/")
        for f in sorted(folder.iterdir()):
            if f.is_file() and (f.suffix == ".py" or f.name == "py.typed"):
                files.append((f"{prefix}/{f.name}", f.read_bytes()))
    _sources.extend(files)
    return files


def edgekit_wheel(dest: Path) -> Path:
    """A wheel of the edgekit modules this process runs (pure Python, reproducible).

    Built from the imported packages rather than a source tree, so an editable checkout
    and an installed edgekit both work, and the version carries a hash of the code.
    """
    import edgekit

    files = _edgekit_sources()
    h = hashlib.sha256()
    for arc, data in files:
        h.update(arc.encode() + b"\0" + data)
    version = f"{edgekit.__version__}+g{h.hexdigest()[:10]}"
    dist = f"edgekit-{version}.dist-info"
    meta = (
        "Metadata-Version: 2.1\nName: edgekit\n"
        f"Version: {version}\nRequires-Python: >=3.9\n"
        "Requires-Dist: numpy>=1.23\nRequires-Dist: pillow>=9\n"
        "Summary: edgekit runtime for edge devices\n"
    )
    files.append((f"{dist}/METADATA", meta.encode()))
    files.append(
        (
            f"{dist}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: edgekit\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    record = []
    for arc, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files.append((f"{dist}/RECORD", ("\n".join(record) + "\n").encode()))
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"edgekit-{version}-py3-none-any.whl"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for arc, data in files:
                info = zipfile.ZipInfo(arc, _ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
        os.replace(tmp, out)
    return out


def _pins(python: str, requirements: tuple[str, ...]) -> list[str]:
    """Pin to the host's tested versions when the device runs the same Python."""
    same = python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    out = []
    for req in requirements:
        bare = req.split("<")[0].split(">")[0].split("=")[0].strip()
        if same and bare == req:
            try:
                out.append(f"{req}=={importlib.metadata.version(req)}")
                continue
            except importlib.metadata.PackageNotFoundError:
                pass
        out.append(req)
    return out


def build_wheelhouse(
    info: DeviceInfo, profile: Profile, *, cache: Path | None = None, verbose: bool = True
) -> Wheelhouse:
    """Download (once; cached) the wheels ``profile`` needs on ``info``'s platform."""
    python = ".".join(info.python.split(".")[:2])
    tags = platform_tags(info.arch, info.glibc_version)
    reqs = _pins(python, ("numpy", "pillow", *profile.requirements))
    if "numpy<2" in reqs:
        reqs = [r for r in reqs if not r.startswith("numpy==")]
    key = hashlib.sha256("|".join([python, tags[0], *reqs]).encode()).hexdigest()[:12]
    root = (cache or cache_dir()) / "wheelhouse"
    folder = root / f"cp{python.replace('.', '')}-{tags[0]}-{key}"
    with _locks_guard:
        lock = _locks.setdefault(str(folder), threading.Lock())
    with lock:
        done = folder / ".complete"
        if not done.exists():
            _download(folder, python, tags, reqs, info, verbose)
            done.write_text("\n".join(reqs) + "\n")
        deps = sorted(folder.glob("*.whl"))
        own = edgekit_wheel(root / "edgekit")
    names = tuple(r.split("=")[0].split("<")[0].split(">")[0] for r in reqs)
    return Wheelhouse((own, *deps), ("edgekit", *names), python, tags[0])


def _download(
    folder: Path, python: str, tags: list[str], reqs: list[str], info: DeviceInfo, verbose: bool
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    abi = f"cp{python.replace('.', '')}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(folder),
        "--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
        "--abi", "none", "--progress-bar", "off", "--disable-pip-version-check",
    ]  # fmt: skip
    for t in tags:
        cmd += ["--platform", t]
    cmd += ["--platform", "any", *reqs]
    if verbose:
        say(f"{info.target}: downloading wheels for {abi} on {tags[0]}: {', '.join(reqs)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise UnsupportedDeviceError(
            f"{info.target}: no wheels for {', '.join(reqs)} on Python {python}, {tags[0]}:\n"
            f"    {tail}",
            hint="pick another backend (--backend), or install a newer Python/OS on the device",
            target=info.target,
        )
