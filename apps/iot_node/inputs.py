"""Where inputs come from: an inbox folder, and how bytes become an image array.

Inbox protocol: drop ``NAME.png|jpg|npy`` into the inbox (write it under a name starting
with ``.`` or ending in ``.part``/``.tmp`` and rename it, or let it rest ``settle_s``). The
node claims a file by renaming it into ``.claimed/`` with its event id in the name, and after
the event is committed moves it to ``done/`` (or ``failed/``): a file is never read twice,
and a file claimed when the node died is finished with the same event id after a restart.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Claim", "Inbox", "InputProblem", "decode"]

_SKIP_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
_SEP = "__"  # between the event id and the file's own name in .claimed/


class InputProblem(ValueError):
    """An input that cannot be classified (it goes to failed/, with an error event)."""


def decode(data: bytes, shape: tuple[int, ...], max_pixels: int) -> np.ndarray:
    """Image bytes (PNG, JPEG, ... anything Pillow reads) or an ``.npy`` -> an array the
    model accepts: images are converted to the model's channels and resized to its size."""
    if data[:6] == b"\x93NUMPY":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise InputProblem(f"not a readable .npy: {exc}") from exc
        if arr.dtype.kind not in "uif" or arr.size != int(np.prod(shape)):
            raise InputProblem(
                f".npy holds {arr.dtype} {tuple(arr.shape)}; the model takes {tuple(shape)} "
                "numbers (uint8 pixels, or floats scaled like the training data)"
            )
        return arr.astype(np.float32) if arr.dtype.kind != "u" else arr.astype(np.uint8)
    h, w, c = shape
    try:
        src = Image.open(io.BytesIO(data))  # reads the header only: size before pixels
        if src.width * src.height > max_pixels:
            raise InputProblem(
                f"image is {src.width}x{src.height}, over the {max_pixels}-pixel limit"
            )
        img = src.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).reshape(h, w, c)
    except InputProblem:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputProblem(f"not an image Pillow can read, nor an .npy: {exc}") from exc


@dataclass(frozen=True)
class Claim:
    """One inbox file the node owns now: ``path`` under ``.claimed/``."""

    event_id: str
    name: str  # the name it was dropped under
    path: str  # a plain string: no pathlib object per input


class Inbox:
    """The inbox folder and its ``.claimed/``, ``done/`` and ``failed/`` subfolders."""

    def __init__(self, root: Path, *, settle_s: float = 0.5, max_listing: int = 4096) -> None:
        self.root = root
        self.claimed = root / ".claimed"
        self.done = root / "done"
        self.failed = root / "failed"
        for d in (root, self.claimed, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.settle_s = settle_s
        self.max_listing = max_listing
        self._queue: list[str] = []

    def recover(self) -> list[Claim]:
        """Files claimed before a crash, with the event ids they were given."""
        out = []
        for entry in sorted(os.scandir(self.claimed), key=lambda e: e.name):
            eid, sep, name = entry.name.partition(_SEP)
            if sep and entry.is_file(follow_symlinks=False):
                out.append(Claim(eid, name, entry.path))
        return out

    def _refill(self) -> None:
        now, settle = time.time(), self.settle_s
        names = []
        with os.scandir(self.root) as it:
            for entry in it:
                n = entry.name
                if n.startswith(".") or n.endswith(_SKIP_SUFFIXES):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue  # folders (done/, failed/) and symlinks are not inputs
                    if settle and now - entry.stat(follow_symlinks=False).st_mtime < settle:
                        continue  # still being written
                except FileNotFoundError:
                    continue
                names.append(n)
                if len(names) >= self.max_listing:
                    break
        names.sort(reverse=True)  # popped from the end: oldest name first
        self._queue = names

    def claim(self, next_id: Iterator[str], limit: int) -> list[Claim]:
        """Rename up to ``limit`` new files into ``.claimed/``; fsync so a claim survives."""
        if not self._queue:
            self._refill()
        out: list[Claim] = []
        root, claimed = f"{self.root}{os.sep}", f"{self.claimed}{os.sep}"
        while self._queue and len(out) < limit:
            name = self._queue.pop()
            eid = next(next_id)
            dst = f"{claimed}{eid}{_SEP}{name}"
            try:
                os.rename(root + name, dst)
            except FileNotFoundError:
                continue  # someone else took it away
            out.append(Claim(eid, name, dst))
        if out:
            fd = os.open(self.claimed, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return out

    def finish(self, claim: Claim, ok: bool) -> None:
        """Move a committed input to done/ (or failed/), never over another file."""
        folder = self.done if ok else self.failed
        dst = f"{folder}{os.sep}{claim.name}"
        if os.path.lexists(dst):
            stem, dot, ext = claim.name.rpartition(".")
            alt = f"{stem}.{claim.event_id}.{ext}" if dot else f"{ext}.{claim.event_id}"
            dst = f"{folder}{os.sep}{alt}"
        os.replace(claim.path, dst)
