"""The camera loop: frames in, bandit inference (or a cached answer), results out."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._capture import Capture, Frame
from ._frames import Preprocessor, annotate, jpeg, thumb_diff, thumbnail

__all__ = ["Camera", "CameraConfig", "Result"]

RECENT = 200  # points in the latency chart


@dataclass(frozen=True)
class CameraConfig:
    """``cache_threshold``: reuse the last answer while the thumbnail differs by less than
    this (mean absolute difference, 0..1; None turns caching off), for at most
    ``cache_max_age`` frames in a row. ``log``: a JSON-lines file, one line per frame.
    ``record``: a folder for annotated JPEGs, or a video file (``.mp4``/``.avi``)."""

    cache_threshold: float | None = 0.01
    cache_max_age: int = 30
    log: Path | None = None
    record: Path | None = None
    duration_s: float | None = None
    stats_every_s: float = 0.5


@dataclass(frozen=True)
class Result:
    """What became of one frame (one JSON line)."""

    seq: int
    time: float
    label: int
    name: str | None
    score: float
    exit: int
    stages_run: int
    latency_ms: float
    glass_ms: float
    offloaded: bool
    split: int | None
    bytes_sent: int
    fallback: bool
    cached: bool
    truth: int | None

    def where(self) -> str:
        if self.cached:
            return "cached"
        if self.offloaded:
            return f"server@{self.split}"
        return f"exit {self.exit}" + (" (fallback)" if self.fallback else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": round(self.time, 6),
            "label": self.label,
            "name": self.name,
            "score": round(self.score, 6),
            "exit": self.exit,
            "stages_run": self.stages_run,
            "latency_ms": round(self.latency_ms, 4),
            "glass_ms": round(self.glass_ms, 4),
            "offloaded": self.offloaded,
            "split": self.split,
            "bytes_sent": self.bytes_sent,
            "fallback": self.fallback,
            "cached": self.cached,
            "where": self.where(),
            "truth": self.truth,
        }


def clean(o: Any) -> Any:
    """JSON-safe: NaN and infinities become None (browsers reject NaN in JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return clean(o.item())
    return o


def _arm(best: Any) -> dict[str, Any] | None:
    """The bandit's best arm as a dict: ``{"threshold": t}`` or ``{"split": s, "threshold": t}``."""
    if best is None or isinstance(best, dict):
        return best
    return {"threshold": "never" if best == math.inf else best}


class Camera:
    """Runs ``model`` (an ``edgekit.EdgeModel``) on the frames of ``capture``.

    One frame at a time touches the model (on the capture thread or the one in :meth:`run`);
    the web view reads snapshots
    (:meth:`latest`, :meth:`stats`, :meth:`frame_jpeg`) that the loop refreshes.
    ``on_result`` is called with every :class:`Result` (printing, MQTT, ...).
    """

    def __init__(
        self,
        model: Any,
        capture: Capture,
        config: CameraConfig | None = None,
        *,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.model = model
        self.capture = capture
        self.config = config or CameraConfig()
        self.on_result = on_result
        self._prep = Preprocessor(tuple(model.manifest.input.shape))
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._latest: Result | None = None
        self._latest_frame: Frame | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._where: dict[str, int] = {}
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._glass: deque[float] = deque(maxlen=4096)
        self._times: deque[float] = deque(maxlen=64)
        self._model_stats: dict[str, Any] = {}
        # EdgeModel.stats() is refreshed by the loop (the model's only user), at most every
        # stats_every_s and only while someone reads stats(): no work when nobody looks.
        self._stats_wanted = True
        self._next_stats = 0.0
        self._log: TextIO | None = None
        self.classified = 0
        self.cached = 0
        self.results = 0
        self.running = False
        self.error: str | None = None
        self._stop = threading.Event()
        self._ref_thumb: np.ndarray | None = None
        self._ref: Result | None = None
        self._age = 0
        self._writer: Any = None
        capture.thumbnails = self.config.cache_threshold is not None

    # -- the loop ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Classify frames until the source ends, ``duration_s`` passes or :meth:`stop`.

        Frames are handled on this thread or, while the model keeps up with the source, on
        the capture thread (:meth:`Capture.serve`): one frame at a time either way."""
        cfg = self.config
        self._log = open(cfg.log, "a", buffering=1 << 16) if cfg.log else None  # noqa: SIM115
        self.running = True
        end = time.perf_counter() + cfg.duration_s if cfg.duration_s else math.inf
        try:
            self.capture.serve(self._handle, self._stop, end)
        finally:
            self.running = False
            self.error = self.capture.error
            self._refresh_model_stats()
            if self._log is not None:
                self._log.close()
            if self._writer is not None:
                self._writer.release()
            with self._new:
                self._new.notify_all()

    def _handle(self, f: Frame) -> None:
        if self._stats_wanted and time.perf_counter() >= self._next_stats:
            self._stats_wanted = False
            self._refresh_model_stats()
            self._next_stats = time.perf_counter() + self.config.stats_every_s
        r = self._process(f)
        if self._log is not None:
            self._log.write(json.dumps(r.to_json()) + "\n")
        if self.config.record is not None:
            self._record(f, r)
        if self.on_result is not None:
            self.on_result(r)

    def _process(self, f: Frame) -> Result:
        cfg = self.config
        th = cfg.cache_threshold
        thumb = None
        if th is not None:
            thumb = f.thumb if f.thumb is not None else thumbnail(f.pixels)
        ref = self._ref
        if (
            thumb is not None
            and ref is not None
            and self._ref_thumb is not None
            and self._age < cfg.cache_max_age
            and th is not None
            and thumb_diff(thumb, self._ref_thumb) < th
        ):
            self._age += 1
            glass = (time.perf_counter() - f.t) * 1e3
            r = Result(
                f.seq, time.time(), ref.label, ref.name, ref.score, ref.exit, 0, 0.0, glass,
                ref.offloaded, ref.split, 0, False, True, f.truth,
            )  # fmt: skip
            self.cached += 1
        else:
            p = self.model.predict(self._prep(f.pixels))
            glass = (time.perf_counter() - f.t) * 1e3
            r = Result(
                f.seq, time.time(), p.label, p.name, float(p.score), p.exit, p.stages_run,
                p.latency_ms, glass, p.offloaded, p.split, p.bytes_sent, p.fallback, False,
                f.truth,
            )  # fmt: skip
            self.classified += 1
            self._ref, self._ref_thumb, self._age = r, thumb, 0
        with self._new:
            self.results += 1
            self._latest, self._latest_frame = r, f
            w = r.where()
            self._where[w] = self._where.get(w, 0) + 1
            self._recent.append(round(glass, 3))
            self._glass.append(glass)
            self._times.append(f.t)
            self._new.notify_all()
        return r

    def _refresh_model_stats(self) -> None:
        s = clean(self.model.stats())
        with self._lock:
            self._model_stats = s

    def _record(self, f: Frame, r: Result) -> None:
        im = annotate(f.pixels, self.lines(r))
        out = self.config.record
        assert out is not None
        if out.suffix.lower() in (".mp4", ".avi", ".mkv"):
            import cv2

            if self._writer is None:
                fourcc = cv2.VideoWriter.fourcc(
                    *("mp4v" if out.suffix.lower() == ".mp4" else "MJPG")
                )
                fps = self.capture.fps or self.capture.source.fps or 15.0
                self._writer = cv2.VideoWriter(str(out), fourcc, fps, im.size)
            self._writer.write(cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR))
        else:
            out.mkdir(parents=True, exist_ok=True)
            im.save(out / f"frame_{f.seq:06d}.jpg", quality=85)

    # -- what the web view reads -----------------------------------------------------------

    @staticmethod
    def lines(r: Result) -> list[str]:
        what = r.name if r.name is not None else str(r.label)
        if r.cached:
            where = "cached"
        elif r.offloaded:
            where = f"server at split {r.split}, {r.bytes_sent} B"
        else:
            where = f"exit {r.exit}" + (" (server down: local)" if r.fallback else "")
        return [f"{what}  {r.score:.2f}", f"{where}  {r.glass_ms:.1f} ms"]

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._latest is None else self._latest.to_json()

    def stats(self) -> dict[str, Any]:
        self._stats_wanted = True
        with self._lock:
            glass = np.fromiter(self._glass, float) if self._glass else None
            times = list(self._times)
            out: dict[str, Any] = {
                "source": self.capture.source.name,
                "running": self.running,
                "error": self.error or self.capture.error,
                "frames": self.capture.captured,
                "results": self.results,
                "classified": self.classified,
                "cached": self.cached,
                "dropped": self.capture.dropped,
                "reconnects": self.capture.reconnects,
                "fps": (len(times) - 1) / (times[-1] - times[0])
                if len(times) > 1 and times[-1] > times[0]
                else None,
                "glass_ms": {
                    "p50": float(np.percentile(glass, 50)) if glass is not None else None,
                    "p95": float(np.percentile(glass, 95)) if glass is not None else None,
                },
                "where": dict(self._where),
                "recent_glass_ms": list(self._recent),
                "arm": _arm((self._model_stats.get("arms") or {}).get("best")),
                "model": self._model_stats,
            }
        return clean(out)

    def frame_jpeg(self, after: int = 0, timeout: float = 2.0) -> tuple[int, bytes] | None:
        """The annotated JPEG of the newest frame with ``seq > after`` (waits up to
        ``timeout``); encoded once per frame however many viewers there are."""
        with self._new:
            if self._latest is None or self._latest.seq <= after:
                self._new.wait(timeout)
            r, f, cached = self._latest, self._latest_frame, self._jpeg
        if r is None or f is None or r.seq <= after:
            return None
        if cached is not None and cached[0] == r.seq:
            return cached
        enc = (r.seq, jpeg(annotate(f.pixels, self.lines(r))))
        with self._lock:
            self._jpeg = enc
        return enc
