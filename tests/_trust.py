"""Test helpers: crafted (hostile) packages, a lax host that skips its own checks, and tree
snapshots that show a push changed nothing it should not have."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

#: A file key that climbs from ``ROOT/NAME/releases/RID.partial`` to ``ROOT/..``.
ESCAPE_KEY = "l/" + "../" * 5 + "outside/pwned.txt"


def _rewrite(pkg: Path, change: Any) -> None:
    data = json.loads((pkg / "manifest.json").read_text())
    change(data)
    (pkg / "manifest.json").write_text(json.dumps(data, indent=2))


def copy_package(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest)
    return dest


def with_escaping_key(src: Path, dest: Path) -> Path:
    """A copy of ``src`` whose manifest lists ``ESCAPE_KEY`` (with its real sha256, so only
    the path rule can stop it); the file exists on the host where the key points."""
    pkg = copy_package(src, dest)
    (pkg / "l").mkdir()
    payload = b"written outside the release folder\n"
    target = Path(os.path.normpath(pkg / ESCAPE_KEY))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    _rewrite(pkg, lambda d: d["files"].update({ESCAPE_KEY: digest}))
    return pkg


def with_symlink(src: Path, dest: Path, secret: Path) -> Path:
    """A copy of ``src`` whose report.json is a symlink to ``secret`` (same bytes, so the
    checksum alone would pass)."""
    pkg = copy_package(src, dest)
    secret.write_bytes((pkg / "report.json").read_bytes())
    (pkg / "report.json").unlink()
    (pkg / "report.json").symlink_to(secret)
    return pkg


def with_name(src: Path, dest: Path, name: str) -> Path:
    pkg = copy_package(src, dest)
    _rewrite(pkg, lambda d: d.update(name=name))
    return pkg


def lax_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch off the host's own package rule (in this process only), to show that the
    device's check stops what a buggy or hostile host would send."""
    import edgekit._package as pk  # internal: switches off the host's package rule
    from edgekit.devices import _remote  # internal: and the agent's copy of it

    monkeypatch.setattr(pk, "check_package_path", lambda rel, **_: rel)
    monkeypatch.setattr(pk, "check_name", lambda name, **_: name)
    monkeypatch.setattr(pk, "package_file", lambda root, rel, **_: Path(root) / rel)
    monkeypatch.setattr(_remote, "check_name", lambda name, **_: name)


Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path, *, skip: tuple[str, ...] = ()) -> Snapshot:
    """Every path under ``root`` with its type, mode, size, mtime and link target (no
    content reads: fast on a device's whole /opt). ``skip``: relative paths left out."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for n in dirnames + filenames:
            p = here / n
            rel = p.relative_to(root).as_posix()
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else None
            plain = p.is_file() and not p.is_symlink()
            # A folder's own mtime moves with any entry (the skipped ones too): its entries
            # are compared one by one instead.
            out[rel] = (
                st.st_mode,
                st.st_size if plain else 0,
                st.st_mtime_ns if plain else 0,
                link,
            )
    return out


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What differs between two snapshots, as readable lines."""
    lines = [f"new: {k}" for k in sorted(set(after) - set(before))]
    lines += [f"gone: {k}" for k in sorted(set(before) - set(after))]
    lines += [f"changed: {k}" for k in sorted(set(before) & set(after)) if before[k] != after[k]]
    return lines
