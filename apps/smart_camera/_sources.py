"""Frame sources: images, folders, video files and cameras (OpenCV), GStreamer pipelines,
picamera2, ``test://``.

Every source yields RGB ``uint8`` frames of shape ``(H, W, 3)`` (or ``(H, W)`` grayscale) and
says whether it is *live* (a camera: frames keep coming whether or not anyone reads them) or a
file (frames wait to be read). OpenCV and picamera2 are imported only by the sources that
need them. Network sources (``rtsp://``, ``http://``) and pipelines give up on opening and on
reading after ``timeout_s``: a dead camera is an error after that long, never a hang.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import select
import shlex
import shutil
import subprocess
import tempfile
import time
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
TIMEOUT_S = 10.0  # network sources and pipelines: opening, and waiting for a frame
PIPELINE_SIZE = (640, 480)  # a pipeline's frame size when its last caps give none
GST_APT = "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good"

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


def open_source(
    spec: str, *, loop: bool = False, seed: int = 0, timeout_s: float = TIMEOUT_S
) -> Source:
    """Open ``spec``: an image, a folder, a video file, ``/dev/videoN`` (or a bare camera
    index), ``rtsp://...`` / ``http://...``, a GStreamer pipeline (``videotestsrc ! ...``),
    ``picam`` or ``test://fashion-mnist[?phase=N]``. ``loop`` repeats file sources;
    ``timeout_s`` bounds opening and reading network sources and pipelines."""
    if timeout_s <= 0:
        raise SourceError(f"the source timeout must be positive, not {timeout_s}")
    if spec.startswith("test://"):
        return FashionStream(spec, loop=loop, seed=seed)
    if spec == "picam" or spec.startswith("picam:"):
        return PicamSource(spec)
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec):
        return VideoSource(spec, live=True, loop=False, timeout_s=timeout_s)
    if "!" in spec:  # a GStreamer pipeline string
        return open_pipeline(spec, timeout_s=timeout_s)
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


def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV was built with its GStreamer backend (the pip wheels are not)."""
    try:
        import cv2
    except ImportError:
        return False
    m = re.search(r"^\s*GStreamer:\s*(\w+)", cv2.getBuildInformation(), re.M)
    return bool(m and m.group(1).upper() == "YES")


def open_pipeline(spec: str, *, timeout_s: float = TIMEOUT_S) -> Source:
    """A GStreamer pipeline: through OpenCV's GStreamer backend when it has one (the
    pipeline ends in ``appsink``; one is added), else run by ``gst-launch-1.0``."""
    if opencv_has_gstreamer():
        if not re.search(r"\bappsink\b", spec):
            spec = f"{spec} ! videoconvert ! appsink"
        return VideoSource(spec, live=True, loop=False, gstreamer=True)
    return GstLaunchSource(spec, timeout_s=timeout_s)


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

    def __init__(
        self,
        spec: str,
        *,
        live: bool,
        loop: bool,
        gstreamer: bool = False,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.name = spec
        self.live = live
        self._loop = loop
        self._gst = gstreamer
        self._url = bool(re.match(r"^[a-z][a-z0-9+.-]*://", spec))
        self.timeout_s = timeout_s
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
        # and so would OpenCV's warnings ("Stream timeout triggered...")
        if cv2.utils.logging.getLogLevel() > cv2.utils.logging.LOG_LEVEL_ERROR:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        target: Any = self.name
        if self.name.isdigit():
            target = int(self.name)
        t0 = time.monotonic()
        if self._url:  # FFmpeg gives up on opening and on each read after timeout_s
            ms = round(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(target, cv2.CAP_GSTREAMER if self._gst else cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            what = "the camera" if self.live else "the video"
            if self.name.startswith("/dev/") or self.name.isdigit():
                why = ": is it plugged in, and may this user read it (group 'video')?"
            elif self._url and time.monotonic() - t0 >= 0.9 * self.timeout_s:
                why = f": no answer within {self.timeout_s:g} s (is the server up, the URL right?)"
            else:
                why = ": check the path/URL and that OpenCV has the codec or backend for it"
            raise SourceError(f"cannot open {what} {self.name!r}{why}")
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        import cv2

        if self._cap is None:
            raise SourceLost(f"{self.name} is closed")
        t0 = time.monotonic()
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self._url and time.monotonic() - t0 >= 0.9 * self.timeout_s:
                raise SourceLost(f"{self.name} sent no frame for {self.timeout_s:g} s")
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


class GstLaunchSource:
    """A GStreamer pipeline run by ``gst-launch-1.0`` (for an OpenCV without GStreamer):
    ``PIPELINE ! videoconvert ! videoscale ! video/x-raw,format=RGB,width=W,height=H !
    fdsink``, raw RGB frames read from a pipe. W and H are the last ``width=``/``height=`` the
    pipeline's caps give, else ``PIPELINE_SIZE``; an ``appsink`` at its end is dropped.

    The pipeline ending normally (EOS: ``num-buffers``, the end of a file) ends the source;
    an error, or no frame for ``timeout_s``, is a lost source (reopened by the capture)."""

    live = True

    def __init__(self, spec: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self.name = spec
        self.timeout_s = timeout_s
        pipeline = re.sub(r"!\s*appsink\b[^!]*$", "", spec.strip()).strip().rstrip("!").strip()
        if not pipeline or pipeline.startswith("!"):
            raise SourceError(f"GStreamer pipeline {spec!r} has no source element")
        self.width, self.height = (
            int(_caps(pipeline, "width") or PIPELINE_SIZE[0]),
            int(_caps(pipeline, "height") or PIPELINE_SIZE[1]),
        )
        if not (0 < self.width * self.height <= MAX_PIXELS):
            raise SourceError(
                f"GStreamer pipeline {spec!r}: frames of {self.width}x{self.height} pixels "
                f"(width= and height= in its caps must be 1 or more, at most {MAX_PIXELS} pixels)"
            )
        rate = re.findall(r"\bframerate=(?:\(fraction\))?(\d+)/(\d+)", pipeline)
        self.fps = int(rate[-1][0]) / int(rate[-1][1]) if rate and int(rate[-1][1]) else None
        self._pipeline = (
            f"{pipeline} ! videoconvert ! videoscale ! "
            f"video/x-raw,format=RGB,width={self.width},height={self.height}"
        )
        try:  # gst-launch-1.0 takes the pipeline as a shell would split it
            self._argv = shlex.split(self._pipeline)
        except ValueError as exc:
            raise SourceError(f"GStreamer pipeline {spec!r}: {exc}") from None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe: io.FileIO | None = None
        self._log: Any = None
        self._first: np.ndarray | None = None
        self.reopen()

    def reopen(self) -> None:
        exe = shutil.which("gst-launch-1.0")
        if exe is None:
            raise SourceError(
                "a GStreamer pipeline source needs gst-launch-1.0, as this OpenCV has no "
                f"GStreamer backend: sudo apt-get install {GST_APT}"
            )
        self.close()
        r, w = os.pipe()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        try:
            self._proc = subprocess.Popen(
                [exe, "-q", *self._argv, "!", "fdsink", f"fd={w}", "sync=false"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                pass_fds=(w,),
            )  # fmt: skip
        finally:
            os.close(w)
        self._pipe = io.FileIO(r, "rb")
        try:
            first = self._frame()
        except SourceLost as exc:
            self.close()
            raise SourceError(f"cannot start the GStreamer pipeline {self.name!r}: {exc}") from None
        if first is None:
            self.close()
            raise SourceError(f"the GStreamer pipeline {self.name!r} ended before its first frame")
        self._first = first

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            f, self._first = self._first, None
            return f
        if self._pipe is None:
            raise SourceLost(f"{self.name} is closed")
        return self._frame()

    def _frame(self) -> np.ndarray | None:
        """The next frame; None when the pipeline ended normally (EOS)."""
        assert self._pipe is not None
        size = self.width * self.height * 3
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        end = time.monotonic() + self.timeout_s
        while got < size:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._pipe], [], [], left)[0]:
                raise SourceLost(f"no frame from the pipeline for {self.timeout_s:g} s")
            n = self._pipe.readinto(view[got:])
            if not n:
                self._ended(got)  # raises unless the pipeline ended normally
                return None
            got += n
        return np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3)

    def _ended(self, got: int) -> None:
        """The pipe closed after ``got`` bytes of a frame: EOS (returns) or an error (raises)."""
        assert self._proc is not None
        try:
            rc = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            rc = None
        if rc == 0 and got == 0:
            return None
        raise SourceLost(f"the pipeline stopped: {self._errors() or f'exit status {rc}'}")

    def _errors(self) -> str:
        """What gst-launch-1.0 said went wrong (its first ERROR/WARNING line)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read(1 << 16).decode(errors="replace").splitlines()]
        bad = [ln for ln in lines if ln.startswith(("ERROR", "WARNING: erroneous"))]
        return (bad or [ln for ln in lines if ln] or [""])[0]

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        for f in (self._pipe, self._log):
            if f is not None:
                f.close()
        self._pipe = self._log = None


def _caps(pipeline: str, field: str) -> str | None:
    """The last ``field=N`` (or ``field=(int)N``) in a pipeline's caps."""
    found = re.findall(rf"\b{field}=(?:\(int\))?(\d+)", pipeline)
    return found[-1] if found else None


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
