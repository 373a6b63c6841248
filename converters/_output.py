"""Where a conversion writes: a hidden ``.NAME.partial-PID/`` folder renamed into place.

Checked before any training: the package name follows the package rule, and ``--force``
replaces only an empty folder or an edge package, never anything else. SIGTERM is handled
like Ctrl-C (the partial folder is removed), and partial folders left by conversions whose
process is gone are removed by the next conversion into the same folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from edgekit._errors import OutputExistsError
from edgekit._package import MANIFEST, check_name

__all__ = ["StagedOutput", "is_edge_package", "package_name", "staged_output"]

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:partial|old|work)-(?P<pid>\d+)")


@dataclass(frozen=True)
class StagedOutput:
    """A conversion's destination: write into ``tmp``; ``out`` appears when it succeeds."""

    out: Path
    tmp: Path
    name: str


def package_name(out: Path, name: str | None = None) -> str:
    """``name``, or the package name ``out`` implies (``fmnist.edgepkg`` -> ``fmnist``),
    checked against the package rule (raises :class:`PackageError`)."""
    if name is None:
        name = out.name[: -len(".edgepkg")] if out.name.endswith(".edgepkg") else out.name
        return check_name(name, what=f"the package name taken from --out {out.name!r},")
    return check_name(name)


def is_edge_package(folder: Path) -> bool:
    """Whether ``folder`` holds a ``manifest.json`` written by edgekit (any schema version,
    valid or not: an old or damaged package may still be replaced)."""
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 16 << 20:
        return False
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("schema_version"), int)
        and all(k in data for k in ("name", "stages", "files"))
    )


def _check_destination(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OutputExistsError(
            f"{out} already exists", hint="pass --force to replace it", path=str(out)
        )
    if out.is_symlink() or not out.is_dir():
        raise OutputExistsError(
            f"{out} exists and is not a folder; --force replaces only an empty folder or an "
            "edge package",
            hint="pick another --out, or move it away yourself",
            path=str(out),
        )
    if any(out.iterdir()) and not is_edge_package(out):
        raise OutputExistsError(
            f"{out} is not empty and is not an edge package (no manifest.json of edgekit's); "
            "--force replaces only an empty folder or an edge package, so nothing was touched",
            hint="pick a new folder for --out (e.g. NAME.edgepkg), or move it away yourself",
            path=str(out),
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID`` / ``.NAME.old-PID`` / ``.NAME.work-PID`` folders next to
    ``out`` whose process is gone; return what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            m = _LEFTOVER.fullmatch(p.name)
            if not m or m["name"] != out.name or p.is_symlink() or not p.is_dir():
                continue
            pid = int(m["pid"])
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C, so the partial folder is cleaned up."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(f"terminated by signal {signum}")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike[str], *, force: bool = False, name: str | None = None
) -> Iterator[StagedOutput]:
    """Check the destination (before any work), then give a folder to write the package in.

    When the block finishes, the folder is renamed to ``out`` (replacing the old package
    with ``force``); when it raises, or SIGINT/SIGTERM arrives, it is removed and ``out`` is
    left as it was.
    """
    dest = Path(os.path.abspath(out))
    if not dest.name:
        raise OutputExistsError(
            f"--out {str(out)!r} names no folder", hint="pass --out NAME.edgepkg", path=str(out)
        )
    pkg_name = package_name(dest, name)
    _check_destination(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    with _sigterm_interrupts():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield StagedOutput(dest, tmp, pkg_name)
            if dest.exists():
                _check_destination(dest, force)  # it may have changed during a long run
                old = dest.parent / f".{dest.name}.old-{os.getpid()}"
                dest.rename(old)
                tmp.rename(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
