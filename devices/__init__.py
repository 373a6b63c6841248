"""edgekit.devices."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import _emulator as emulate
    from ._emulator import VirtualDevice

# Public name -> (private module, attribute or None for the module itself). Loaded on first
# use, so `import edgekit.devices` stays cheap (no paramiko until an SSH operation needs it).
_LAZY: dict[str, tuple[str, str | None]] = {
    "emulate": ("._emulator", None),
    "VirtualDevice": ("._emulator", "VirtualDevice"),
}

__all__ = ["VirtualDevice", "emulate"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = importlib.import_module(module, __name__)
    return mod if attr is None else getattr(mod, attr)
