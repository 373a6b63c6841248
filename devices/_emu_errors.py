"""The virtual device's two errors (the rest of the tree is in :mod:`edgekit._errors`).

Imported from :mod:`edgekit.devices` (``edgekit.devices.EmulatorError``) and from
``edgekit.devices.emulate``; every part of the emulator raises these.
"""

from __future__ import annotations

from edgekit._errors import EdgekitError

__all__ = ["EmulatorError", "HostNotSupported"]


class EmulatorError(EdgekitError):
    """The virtual device could not be built, started, shaped or stopped."""


class HostNotSupported(EmulatorError):
    """This machine cannot run the virtual device (not root, no binfmt_misc, no netns...)."""
