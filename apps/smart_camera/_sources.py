"""Frame sources: images, folders, video files and cameras (OpenCV), picamera2, ``test://``.

Every source yields RGB ``uint8`` frames of shape ``(H, W, 3)`` (or ``(H, W)`` grayscale) and
says whether it is *live* (a camera: frames keep coming whether or not anyone reads them) or a
file (frames wait to be read). OpenCV and picamera2 are imported only by the sources that
need them.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["Source", "SourceError", "SourceLost", "open_source"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpg", ".mjpeg"})
MAX_FOLDER_IMAGES = 1_000_000
MAX_PIXELS = 64_000_000  # a frame bigger than this is refused, not allocated

FASHION_EASY = (1, 5, 7, 8, 9)  # trouser, sandal, sneaker, bag, ankle boot
FASHION_HARD = (0, 2, 3, 4, 6)  # T-shirt, pullover, dress, coat, shirt
#: The share of hard images in each phase of ``test://fashion-mnist``.
HARD_MIX = (0.1, 0.5, 0.9, 0.3)


class SourceError(Exception):
    """A source that cannot be opened or read; the message says what to do."""


class SourceLost(SourceError):
    """A live source stopped delivering frames (a camera unplugged, a stream gone)."""


class Source(Protocol):
    """What the capture thread reads."""

    name: str
    live: bool
    fps: float | None

    def read(self) -> np.ndarray | None:
        """The next frame; None at the end of a file source. Raises :class:`SourceLost`."""

    def reopen(self) -> None:
        """Try to open a lost live source again (raises :class:`SourceError` if it cannot)."""

    def close(self) -> None: ...


def open_source(spec: str, *, loop: bool = False, seed: int = 0) -> Source:
    """Open ``spec``: an image, a folder, a video file, ``/dev/videoN`` (or a bare camera
    index), ``rtsp://...`` / ``http://...``, a GStreamer pipeline (``... ! appsink``),
    ``picam`` or ``test://fashion-mnist[?phase=N]``. ``loop`` repeats file sources."""
    if spec.startswith("test://"):
        return FashionStream(spec, loop=loop, seed=seed)
    if spec == "picam" or spec.startswith("picam:"):
        return PicamSource(spec)
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec):
        return VideoSource(spec, live=True, loop=False)
    if "!" in spec:  # a GStreamer pipeline string
        return VideoSource(spec, live=True, loop=False, gstreamer=True)
    if spec.isdigit() or spec.startswith("/dev/video"):
        return VideoSource(spec, live=True, loop=False)
    path = Path(spec)
    if path.is_dir():
        return ImageSource(path, _folder_images(path), loop=loop)
    if not path.exists():
        raise SourceError(
            f"source {spec!r} does not exist: give an image, a folder of images, a video file, "
            "/dev/videoN, rtsp://..., a GStreamer pipeline, picam or test://fashion-mnist"
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path, [path], loop=loop)
    return VideoSource(str(path), live=False, loop=loop)


def _folder_images(folder: Path) -> list[Path]:
    files: list[Path] = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            files.append(p)
            if len(files) > MAX_FOLDER_IMAGES:
                raise SourceError(f"folder {str(folder)!r} has over {MAX_FOLDER_IMAGES} images")
    if not files:
        raise SourceError(
            f"folder {str(folder)!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def _check_size(frame: np.ndarray, name: str) -> np.ndarray:
    if frame.shape[0] * (frame.shape[1] if frame.ndim > 1 else 1) > MAX_PIXELS:
        raise SourceError(f"{name}: frame of {frame.shape} is larger than {MAX_PIXELS} pixels")
    return frame


class ImageSource:
    """Still images (one file or a sorted folder), read with Pillow."""

    live = False
    fps: float | None = None

    def __init__(self, path: Path, files: list[Path], *, loop: bool) -> None:
        self.name = str(path)
        self._files = files
        self._loop = loop
        self._i = 0

    def read(self) -> np.ndarray | None:
        from PIL import Image

        if self._i >= len(self._files):
            if not self._loop:
                return None
            self._i = 0
        path = self._files[self._i]
        self._i += 1
        try:
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise SourceError(f"{path}: {im.width}x{im.height} is too large")
                gray = im.mode in ("1", "L", "LA", "I;16")
                return np.asarray(im.convert("L" if gray else "RGB"))
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read image {str(path)!r}: {exc}") from None

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


class VideoSource:
    """Anything OpenCV's ``VideoCapture`` opens: files, V4L2, RTSP/HTTP, GStreamer."""

    def __init__(self, spec: str, *, live: bool, loop: bool, gstreamer: bool = False) -> None:
        self.name = spec
        self.live = live
        self._loop = loop
        self._gst = gstreamer
        self._cap: Any = None
        self.fps: float | None = None
        self._open()

    def _open(self) -> None:
        # FFmpeg's own log lines (connection refused...) would repeat what our errors say
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        try:
            import cv2
        except ImportError:
            raise SourceError(
                f"reading {self.name!r} needs OpenCV: pip install 'edgekit[apps]' "
                "(opencv-python-headless)"
            ) from None
        target: Any = self.name
        if self.name.isdigit():
            target = int(self.name)
        api = cv2.CAP_GSTREAMER if self._gst else cv2.CAP_ANY
        cap = cv2.VideoCapture(target, api)
        if not cap.isOpened():
            cap.release()
            what = "the camera" if self.live else "the video"
            raise SourceError(
                f"cannot open {what} {self.name!r}"
                + (
                    ": is it plugged in, and may this user read it (group 'video')?"
                    if self.name.startswith("/dev/") or self.name.isdigit()
                    else ": check the path/URL and that OpenCV has the codec or backend for it"
                )
            )
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        import cv2

        if self._cap is None:
            raise SourceLost(f"{self.name} is closed")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.live:
                raise SourceLost(f"{self.name} stopped delivering frames")
            if not self._loop:
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
            if not ok or frame is None:
                return None
        _check_size(frame, self.name)
        if frame.ndim == 2:
            return np.asarray(frame)
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class PicamSource:
    """A Raspberry Pi camera through picamera2 (``apt install python3-picamera2``)."""

    live = True
    fps: float | None = None

    def __init__(self, spec: str) -> None:
        self.name = spec
        size = spec.partition(":")[2] or "640x480"
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise SourceError(
                f"picam size {size!r} is not WIDTHxHEIGHT (e.g. picam:640x480)"
            ) from None
        self._size = (w, h)
        self._cam: Any = None
        self.reopen()

    def reopen(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "picam needs picamera2: on Raspberry Pi OS `sudo apt install python3-picamera2` "
                "and create the venv with --system-site-packages"
            ) from None
        self.close()
        try:
            cam = Picamera2()
            cam.configure(
                cam.create_video_configuration(main={"size": self._size, "format": "RGB888"})
            )
            cam.start()
        except Exception as exc:  # picamera2 raises RuntimeError/IndexError without a camera
            raise SourceError(f"cannot open the Pi camera: {exc}") from None
        self._cam = cam

    def read(self) -> np.ndarray | None:
        try:
            # RGB888 in picamera2 is BGR byte order
            return np.ascontiguousarray(self._cam.capture_array()[..., ::-1])
        except Exception as exc:
            raise SourceLost(f"the Pi camera stopped: {exc}") from None

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.close()
            finally:
                self._cam = None


@dataclass(frozen=True)
class _Idx:
    images: np.ndarray
    labels: np.ndarray


def _read_idx(path: Path, dims: int) -> np.ndarray:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4 + 4 * dims)
        if len(head) < 4 + 4 * dims or head[2] != 8 or head[3] != dims:
            raise SourceError(f"{path} is not an IDX file of {dims}-D unsigned bytes")
        shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
        n = int(np.prod(shape))
        if n > 200_000_000:
            raise SourceError(f"{path}: IDX shape {shape} is implausibly large")
        data = f.read(n)
    if len(data) != n:
        raise SourceError(f"{path} is truncated ({len(data)} of {n} bytes)")
    return np.frombuffer(data, np.uint8).reshape(shape)


def _load_fashion_test() -> _Idx:
    from edgekit.data import FASHION_MNIST_DIR

    root = Path(os.environ.get("EDGEKIT_FASHION_MNIST") or FASHION_MNIST_DIR)
    found = {}
    for key, stem, dims in (("x", "t10k-images-idx3-ubyte", 3), ("y", "t10k-labels-idx1-ubyte", 1)):
        p = next((q for q in (root / stem, root / f"{stem}.gz") if q.is_file()), None)
        if p is None:
            raise SourceError(
                f"test://fashion-mnist needs {stem}[.gz] in {str(root)!r}: "
                "apt-get install dataset-fashion-mnist, or set EDGEKIT_FASHION_MNIST to its folder"
            )
        found[key] = _read_idx(p, dims)
    if len(found["x"]) != len(found["y"]):
        raise SourceError(f"Fashion-MNIST test files in {root} disagree in length")
    return _Idx(found["x"], found["y"])


class FashionStream:
    """``test://fashion-mnist``: Fashion-MNIST test images as a stream whose share of hard
    classes (shirts, pullovers, coats...) changes every ``phase`` frames (``HARD_MIX``).

    Frames are upscaled ``zoom`` times (nearest), so the web view shows something visible
    and an area resize gives back the original 28x28 pixels exactly. ``label`` is the true
    class of the last frame read.
    """

    live = False
    fps: float | None = None

    def __init__(self, spec: str, *, loop: bool, seed: int) -> None:
        m = re.match(r"^test://(fashion-mnist|fmnist)(\?.*)?$", spec)
        if not m:
            raise SourceError(f"unknown test source {spec!r}: use test://fashion-mnist")
        opts = dict(kv.partition("=")[::2] for kv in (m.group(2) or "?")[1:].split("&") if kv)
        try:
            self.phase = max(1, int(opts.get("phase", 200)))
            self.zoom = min(32, max(1, int(opts.get("zoom", 8))))
            self.limit = int(opts["n"]) if "n" in opts else None
        except ValueError:
            raise SourceError(f"bad option in {spec!r}: phase, zoom and n are integers") from None
        self.name = spec
        self._loop = loop
        data = _load_fashion_test()
        self._images, self._labels = data.images, data.labels
        self._easy = np.flatnonzero(np.isin(data.labels, FASHION_EASY))
        self._hard = np.flatnonzero(np.isin(data.labels, FASHION_HARD))
        self._rng = np.random.default_rng(seed)
        self._count = 0
        self.label: int | None = None

    def hard_share(self, i: int) -> float:
        return HARD_MIX[(i // self.phase) % len(HARD_MIX)]

    def read(self) -> np.ndarray | None:
        if self.limit is not None and self._count >= self.limit and not self._loop:
            return None
        pool = self._hard if self._rng.random() < self.hard_share(self._count) else self._easy
        j = int(pool[self._rng.integers(len(pool))])
        self._count += 1
        self.label = int(self._labels[j])
        img = self._images[j]
        z = self.zoom
        return np.repeat(np.repeat(img, z, axis=0), z, axis=1) if z > 1 else img.copy()

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def iterate(source: Source) -> Iterator[np.ndarray]:
    """Every frame of a file source, in order (for tests and the benchmark's bare loop)."""
    while True:
        f = source.read()
        if f is None:
            return
        yield f
