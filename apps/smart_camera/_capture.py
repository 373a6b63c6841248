"""The capture thread: reads the source on its own, so a slow model never makes frames stale.

Live sources (``realtime``) keep only the newest frame: one the model did not get to in
time is replaced and counted as dropped. File sources wait for the model (nothing dropped)
unless asked to behave like a camera. A live source that stops is reopened with
exponential backoff; when that keeps failing, :attr:`Capture.error` says so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ._frames import thumbnail
from ._sources import Source, SourceError, SourceLost

__all__ = ["Capture", "Frame"]

READ_AHEAD = 4  # frames a file source decodes ahead of the model


@dataclass(frozen=True)
class Frame:
    """One frame: pixels, when it was read (``time.perf_counter``), its number, and the true
    class when the source knows it (``test://``)."""

    pixels: np.ndarray
    t: float
    seq: int
    truth: int | None = None
    thumb: np.ndarray | None = None


class Capture:
    """Reads ``source`` in a daemon thread; :meth:`get` hands out frames.

    ``fps`` paces a file source like a camera (None: as fast as it is read). ``retries``
    and ``backoff_s`` govern reopening a lost live source (backoff doubles, capped at 8 s).
    ``max_frames`` stops after that many frames. ``thumbnails``: also compute each frame's
    thumbnail for temporal caching here, in parallel with the model (the camera sets it).
    """

    def __init__(
        self,
        source: Source,
        *,
        realtime: bool | None = None,
        fps: float | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_frames: int | None = None,
    ) -> None:
        self.source = source
        self.realtime = source.live if realtime is None else realtime
        self.fps = fps
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_frames = max_frames
        self.captured = 0
        self.dropped = 0
        self.reconnects = 0
        self.error: str | None = None
        self.thumbnails = False
        self._slot: deque[Frame] = deque()
        self._reader_waits = False
        self._cond = threading.Condition()
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        self.source.close()

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._done and not self._slot

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The next frame (live: the newest); None after ``timeout`` or at the end."""
        with self._cond:
            if not self._slot and not self._done:
                self._cond.wait(timeout)
            if not self._slot:
                return None
            f = self._slot.popleft()
            if self._reader_waits:
                self._cond.notify_all()
            return f

    def _put(self, f: Frame) -> None:
        with self._cond:
            if self.realtime:
                if self._slot:
                    self.dropped += len(self._slot)
                    self._slot.clear()
            else:
                # a file source reads a few frames ahead, then waits for the model
                while len(self._slot) >= READ_AHEAD and not self._stop.is_set():
                    self._reader_waits = True
                    self._cond.wait(0.5)
                self._reader_waits = False
            self._slot.append(f)
            self._cond.notify_all()

    def _read(self) -> np.ndarray | None:
        try:
            return self.source.read()
        except SourceLost as exc:
            lost = str(exc)
        delay = self.backoff_s
        for _attempt in range(1, self.retries + 1):
            if self._stop.wait(delay):
                return None
            try:
                self.source.reopen()
                frame = self.source.read()
                self.reconnects += 1
                return frame
            except SourceError:
                delay = min(delay * 2, 8.0)
        self.error = (
            f"{lost}; gave up after {self.retries} attempts to reopen it "
            f"(over {self._waited(self.retries):.0f} s): check the cable/URL and restart"
        )
        return None

    def _waited(self, n: int) -> float:
        return sum(min(self.backoff_s * 2**i, 8.0) for i in range(n))

    def _run(self) -> None:
        period = 1.0 / self.fps if self.fps else 0.0
        nxt = time.perf_counter()
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and self.captured >= self.max_frames:
                    break
                if period:
                    nxt += period
                    wait = nxt - time.perf_counter()
                    if wait > 0:
                        self._stop.wait(wait)
                    else:
                        nxt = time.perf_counter()
                frame = self._read()
                if frame is None:
                    break
                truth = getattr(self.source, "label", None)
                self.captured += 1
                t = time.perf_counter()
                thumb = thumbnail(frame) if self.thumbnails else None
                self._put(Frame(frame, t, self.captured, truth, thumb))
        except SourceError as exc:
            self.error = str(exc)
        except Exception as exc:  # a broken decoder must not kill the app silently
            self.error = f"{self.source.name}: {type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
