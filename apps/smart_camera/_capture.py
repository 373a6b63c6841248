"""The capture thread: reads the source on its own, so a slow model never makes frames stale.

Live sources (``realtime``) keep only the newest frame: one the model did not get to in
time is replaced and counted as dropped. File sources wait for the model (nothing dropped)
unless asked to behave like a camera. A live source that stops is reopened with
exponential backoff; when that keeps failing, :attr:`Capture.error` says so.

:meth:`Capture.serve` runs a handler on the frames. While the handler keeps up with the
source (it takes under ``KEEP_UP`` of the frame interval), the capture thread runs it itself
on the frame it just read: no hand-off to another thread, whose wake-up would add to every
frame's latency. When the handler is slower, frames go through the newest-only slot to the
thread that called :meth:`~Capture.serve`, and the capture thread goes on reading.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._frames import thumbnail
from ._sources import Source, SourceError, SourceLost

__all__ = ["Capture", "Frame"]

READ_AHEAD = 4  # frames a file source decodes ahead of the model
#: The capture thread runs the handler itself while the handler takes (on average, and the
#: last time) under this share of the frame interval; above it, frames go to the other thread.
KEEP_UP = 0.8
_EMA = 0.2  # weight of the newest sample in the running means of handler time and interval
#: A live source's frame interval is measured only while the capture thread just reads; while
#: it handles frames itself, every PROBE-th frame goes to the other thread to measure it again
#: (a camera that buffered frames behind a slow handler shows a short interval).
PROBE = 64


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
    ``inline`` counts the frames :meth:`serve`'s handler ran on the capture thread.
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
        self.inline = 0
        self._slot: deque[Frame] = deque()
        self._reader_waits = False
        self._handler: Callable[[Frame], None] | None = None
        self._busy = False  # a thread is in the handler
        self._failure: BaseException | None = None  # what the handler raised on this thread
        self._proc_s: float | None = None  # running mean of the handler's time, and the last
        self._last_s = 0.0
        self._interval_s: float | None = None  # running mean of the time between frames
        self._last_iv = math.inf  # and the last one measured
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

    def serve(
        self,
        handler: Callable[[Frame], None],
        stop: threading.Event | None = None,
        deadline: float = math.inf,
    ) -> None:
        """Call ``handler`` on every frame (live: the newest), one at a time, until the source
        ends, ``stop`` is set or ``time.perf_counter()`` passes ``deadline``.

        The calling thread handles the frames the capture thread hands it; while the handler
        keeps up with the source, the capture thread calls it itself (see the module's doc).
        What the handler raises, on either thread, is raised here; when this returns, the
        handler is no longer running and is not called again."""
        with self._cond:
            self._handler = handler
        try:
            while (stop is None or not stop.is_set()) and self._failure is None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                with self._cond:
                    if not self._slot and not self._done:
                        self._cond.wait(min(0.25, left))
                    if not self._slot:
                        if self._done and not self._busy:
                            break
                        continue
                    f = self._slot.popleft()
                    self._busy = True
                    if self._reader_waits:
                        self._cond.notify_all()
                try:
                    self._timed(handler, f)
                finally:
                    with self._cond:
                        self._busy = False
        finally:
            with self._cond:
                self._handler = None
                while self._busy:  # the capture thread finishes the frame it is handling
                    self._cond.wait(0.5)
        if self._failure is not None:
            raise self._failure

    def _timed(self, handler: Callable[[Frame], None], f: Frame) -> None:
        t0 = time.perf_counter()
        handler(f)
        dt = time.perf_counter() - t0
        self._last_s = dt
        self._proc_s = dt if self._proc_s is None else self._proc_s + _EMA * (dt - self._proc_s)

    def _keeps_up(self) -> bool:
        """Whether the handler is fast enough to run on the capture thread. A file read as
        fast as it decodes waits for the model anyway: it is read and classified in turn, as
        a bare loop does (decoding ahead on this thread measured slower: the hand-offs)."""
        if self.fps:
            interval: float | None = 1.0 / self.fps
        elif not self.realtime:
            return True
        elif self._interval_s is not None:
            interval = min(self._interval_s, self._last_iv)
        else:
            return False
        return (
            interval is not None
            and self._proc_s is not None
            and self._proc_s < KEEP_UP * interval
            and self._last_s < interval
        )

    def _deliver(self, f: Frame, here: bool) -> bool:
        """Handle ``f`` on this thread if ``here`` and the handler is idle and keeps up, else
        put it in the slot. Returns whether it was handled here."""
        with self._cond:
            handler = self._handler
            here = here and handler is not None and not self._busy and not self._slot
            if here and self._keeps_up():
                self._busy = True
            else:
                handler = None
        if handler is None:
            self._put(f)
            return False
        try:
            self._timed(handler, f)
            self.inline += 1
        except BaseException as exc:  # serve() raises it on its caller's thread
            self._failure = exc
            self._stop.set()
        finally:
            with self._cond:
                self._busy = False
                if self._failure is not None or self._handler is None:
                    self._cond.notify_all()  # serve() is waiting for this frame, or failed
        return True

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
        t_prev: float | None = None  # when the last frame was read, if not handled here since
        here = 0  # frames handled here since the last probe
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
                reconnects = self.reconnects
                frame = self._read()
                if frame is None:
                    break
                truth = getattr(self.source, "label", None)
                self.captured += 1
                t = time.perf_counter()
                if t_prev is not None and reconnects == self.reconnects:
                    self._last_iv = iv = t - t_prev  # the source's frame interval
                    m = self._interval_s
                    self._interval_s = iv if m is None else m + _EMA * (iv - m)
                thumb = thumbnail(frame) if self.thumbnails else None
                f = Frame(frame, t, self.captured, truth, thumb)
                if self._deliver(f, here=here < PROBE or bool(self.fps)):
                    here, t_prev = here + 1, None
                else:
                    here, t_prev = 0, t
        except SourceError as exc:
            self.error = str(exc)
        except Exception as exc:  # a broken decoder must not kill the app silently
            self.error = f"{self.source.name}: {type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
