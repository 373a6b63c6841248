"""The inbox folder: which files wait in it, reading one, moving it to ``done/`` or ``failed/``.

Inbox protocol: drop ``NAME.png|jpg|npy`` into the inbox (write it under a name starting
with ``.`` or ending in ``.part``/``.tmp`` and rename it, or let it rest ``settle_s``). The
node reads it where it lies; once its event is committed, the publisher moves it to ``done/``
(or ``failed/``). The commit records the file's name and identity (inode, mtime, size) with
the event, so a file is never read twice: not while it waits to be moved, nor after a restart
(the restart moves it under the event already committed). Stdlib only: the publisher process
imports it too.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

__all__ = ["Inbox", "InputProblem", "identity"]

_SKIP_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")


class InputProblem(ValueError):
    """An input that cannot be classified (it goes to failed/, with an error event)."""


class Inbox:
    """The inbox folder and its ``done/`` and ``failed/`` subfolders.

    A file stays where it was dropped until its event is committed; then the publisher
    process moves it (one rename, off the inference's core). ``pending`` holds the files
    committed but not moved yet, by name, with their identity (inode, mtime, size): a
    listing skips them, so none is read twice, and the outbox keeps the same record
    (``Outbox.committed_files``) for a restart.
    """

    def __init__(self, root: Path, *, settle_s: float = 0.5, max_listing: int = 4096) -> None:
        self.root = root
        self.done = root / "done"
        self.failed = root / "failed"
        for d in (root, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.settle_s = settle_s
        self.max_listing = max_listing
        self.pending: dict[str, str] = {}  # committed, not moved yet: name -> identity
        self._hand: set[str] = set()  # taken, not committed yet
        self._queue: list[str] = []

    def _refill(self) -> None:
        now, settle, pending, hand = time.time(), self.settle_s, self.pending, self._hand
        names, listed = [], set()
        complete = True
        with os.scandir(self.root) as it:
            for entry in it:
                n = entry.name
                if n.startswith(".") or n.endswith(_SKIP_SUFFIXES) or n in hand:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue  # folders (done/, failed/) and symlinks are not inputs
                    if n in pending:
                        listed.add(n)
                        if identity(entry.stat(follow_symlinks=False)) == pending[n]:
                            continue  # committed; the publisher has not moved it yet
                    if settle and now - entry.stat(follow_symlinks=False).st_mtime < settle:
                        continue  # still being written
                except FileNotFoundError:
                    continue
                names.append(n)
                if len(names) >= self.max_listing:
                    complete = False
                    break
        if complete and len(listed) < len(pending):  # the others have been moved
            self.pending = {n: pending[n] for n in listed}
        names.sort(reverse=True)  # popped from the end: oldest name first
        self._queue = names

    def take(self, limit: int) -> list[str]:
        """Up to ``limit`` names of files waiting in the inbox, oldest name first."""
        if not self._queue:
            self._refill()
        q = self._queue
        if len(q) <= limit:
            out, self._queue = q[::-1], []
        else:
            out = q[: -limit - 1 : -1]
            del q[-limit:]
        self._hand.update(out)
        return out

    def release(self, name: str) -> None:
        """A taken file that will not be committed (it went away before it was read)."""
        self._hand.discard(name)

    def read(self, name: str, max_bytes: int) -> tuple[bytes, str] | None:
        """The file's bytes and identity; None if it is gone (someone took it away)."""
        try:
            f = open(f"{self.root}{os.sep}{name}", "rb")  # noqa: SIM115
        except FileNotFoundError:
            return None
        with f:
            st = os.fstat(f.fileno())
            if st.st_size > max_bytes:
                raise InputProblem(f"{st.st_size} bytes, over max_request_bytes={max_bytes}")
            return f.read(), identity(st)

    def committed(self, files: list[tuple[str, str]]) -> None:
        """``(name, identity)`` of files whose events are committed (moved later)."""
        for name, ident in files:
            self._hand.discard(name)
            self.pending[name] = ident

    def finish(self, name: str, ok: bool, event_id: str) -> None:
        """Move a committed input to done/ (or failed/), never over another file."""
        folder = self.done if ok else self.failed
        dst = f"{folder}{os.sep}{name}"
        if os.path.lexists(dst):
            stem, dot, ext = name.rpartition(".")
            dst = f"{folder}{os.sep}" + (f"{stem}.{event_id}.{ext}" if dot else f"{ext}.{event_id}")
        with contextlib.suppress(FileNotFoundError):  # moved already, or taken away
            os.rename(f"{self.root}{os.sep}{name}", dst)

    def unmoved(self, committed: dict[str, tuple[str, bool, str]]) -> list[tuple[str, bool, str]]:
        """Of ``committed`` (name -> identity, ok, event id, from the outbox), the files
        still in the inbox as they were committed: ``(name, ok, event_id)`` to move."""
        out = []
        for name, (ident, ok, eid) in committed.items():
            try:
                st = os.stat(f"{self.root}{os.sep}{name}", follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if identity(st) == ident:
                out.append((name, ok, eid))
        return out


def identity(st: os.stat_result) -> str:
    """What tells one file from a later one dropped under the same name."""
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
