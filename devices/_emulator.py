"""A virtual Raspberry Pi: Debian bookworm arm64 under qemu-user, with a real OpenSSH server.

The root filesystem is built once with debootstrap and cached (built in a temporary folder and
renamed into place, so a half-built one is never used). Each device mounts its own overlay of
it (or gets its own copy where overlayfs is unavailable), so what one device writes never
reaches the cache or another device. Its sshd runs chrooted, as an arm64 binary through
binfmt_misc, either in a network namespace of its own (a veth pair to the host, no default
route: like a device in the field it reaches no package index; the host side of the veth is
where ``tc tbf`` shapes its bandwidth) or on the host's loopback.

Everything here needs root. Typical use::

    from edgekit.devices import emulate

    dev = emulate.start("pi0", key="~/.ssh/id_ed25519.pub")
    print(dev.target, dev.host_key_fingerprint)
    dev.write_ssh_config()            # a Host pi0 block in ~/.ssh/config
    emulate.stop("pi0")

This module is the facade (``edgekit.devices.emulate``); the parts are

- ``_emu_paths``: settings and places (the recipe, cache and state folders, device names),
- ``_emu_host``: host checks (root, binfmt_misc and qemu, network namespaces: ``host_problem``),
- ``_emu_rootfs``: the cached root filesystem (debootstrap, its stamp: ``build_rootfs``),
- ``_emu_mounts``: a device's own root (overlay or copy, disk limit, /dev, /proc, /sys, the
  board model, what is written into /etc) and safe unmounting and removal,
- ``_netns``: the network (``ShapedLink``: namespace, veth pair, tbf shaping),
- ``_emu_records`` (``VirtualDevice``, ``DeviceStatus``) and ``_emu_state`` (records on disk,
  the processes in a device, ``status``, ``list_devices``),
- ``_emu_keys``: SSH keys; ``_emu_device``: ``start``, ``shape``, ``stop``,
- ``_emu_errors`` (``EmulatorError``, ``HostNotSupported``) and ``_emu_sys`` (commands, locks).
"""

# Re-exports: every name this module held before it was split keeps working here, and a few
# private helpers the unit tests reach for edge cases (and the CLI's root check).
# ruff: noqa: F401

from __future__ import annotations

from ._emu_device import _port_free, shape, start, stop
from ._emu_errors import EmulatorError, HostNotSupported
from ._emu_host import ensure_binfmt, host_problem, qemu_version, warn_old_qemu
from ._emu_keys import _fingerprint, _resolve_key
from ._emu_mounts import _size_bytes
from ._emu_paths import (
    ARCH,
    DATA_DIR,
    DEB_ARCH,
    DEFAULT_CACHE,
    DEFAULT_MIRROR,
    DEFAULT_NET,
    DEFAULT_STATE,
    PACKAGES,
    PYTHON_MODES,
    RECIPE,
    STAMP,
    SUITE,
    _rootfs_ready,
    cache_dir,
    state_root,
)
from ._emu_records import DeviceStatus, VirtualDevice
from ._emu_rootfs import build_rootfs
from ._emu_state import list_devices, status
from ._emu_sys import _is_root, _pid_alive
from ._netns import ShapedLink, _rate_bits

__all__ = [
    "DATA_DIR",
    "DeviceStatus",
    "EmulatorError",
    "HostNotSupported",
    "ShapedLink",
    "VirtualDevice",
    "build_rootfs",
    "cache_dir",
    "host_problem",
    "list_devices",
    "shape",
    "start",
    "state_root",
    "status",
    "stop",
]
