"""Settings and places of the emulator: the rootfs recipe, the cache and state folders
(``EDGEKIT_EMULATOR_CACHE``/``_STATE``), the device network (``EDGEKIT_EMULATOR_NET``),
device names and what they name (netns ``ek-NAME``, veth ``ekh-NAME``), the rootfs stamp."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ._emu_errors import EmulatorError

__all__ = [
    "ARCH",
    "DATA_DIR",
    "DEB_ARCH",
    "DEFAULT_CACHE",
    "DEFAULT_MIRROR",
    "DEFAULT_NET",
    "DEFAULT_STATE",
    "PACKAGES",
    "PYTHON_MODES",
    "RECIPE",
    "STAMP",
    "SUITE",
    "cache_dir",
    "state_root",
]


SUITE = "bookworm"
DEB_ARCH = "arm64"
ARCH = "aarch64"
PACKAGES = ("python3", "python3-venv", "openssh-server")
# Bump when the recipe changes: a cached rootfs with another recipe is rebuilt.
RECIPE = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path("/var/cache/edgekit/emulator")
DEFAULT_STATE = Path("/var/lib/edgekit/emulator")
DEFAULT_NET = "10.77"
#: Where the integrator's push installs on a device; with ``disk_limit`` it is on the small disk.
DATA_DIR = "/opt/edgekit"
PYTHON_MODES = ("system", "none", "old")
STAMP = ".edgekit-rootfs.json"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")


def cache_dir(override: str | Path | None = None) -> Path:
    """Where built root filesystems are cached (``EDGEKIT_EMULATOR_CACHE``)."""
    raw = override or os.environ.get("EDGEKIT_EMULATOR_CACHE") or DEFAULT_CACHE
    return Path(raw).expanduser().absolute()


def state_root() -> Path:
    """Where devices keep their disks, logs and records (``EDGEKIT_EMULATOR_STATE``)."""
    raw = os.environ.get("EDGEKIT_EMULATOR_STATE") or DEFAULT_STATE
    return Path(raw).expanduser().absolute()


def _state_dir(name: str) -> Path:
    return state_root() / name


def _net_prefix() -> str:
    prefix = os.environ.get("EDGEKIT_EMULATOR_NET", DEFAULT_NET)
    if not re.fullmatch(r"\d{1,3}\.\d{1,3}", prefix):
        raise EmulatorError(
            f"EDGEKIT_EMULATOR_NET={prefix!r} is not the first two octets of an IPv4 network",
            hint="use something like 10.77 (devices get 10.77.N.2, the host 10.77.N.1)",
        )
    return prefix


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise EmulatorError(
            f"invalid device name {name!r}",
            hint="use 1-11 characters: lower-case letters, digits and '-' (e.g. pi0); "
            "it names the network namespace ek-NAME and the veth ekh-NAME",
            name=name,
        )


def _netns_name(name: str) -> str:
    return f"ek-{name}"


def _veth_name(name: str) -> str:
    return f"ekh-{name}"


def _rootfs_ready(root: Path) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("recipe") == RECIPE


def _read_stamp(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / STAMP).read_text()))
    except (OSError, ValueError):
        return {}
