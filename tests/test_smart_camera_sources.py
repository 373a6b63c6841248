"""The smart camera's live sources with real components: GStreamer pipelines run by a real
gst-launch-1.0 (OpenCV's pip wheels have no GStreamer backend), RTSP from a real GStreamer
RTSP server (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0, in the system python),
dead URLs on a loopback port that accepts and never answers. V4L2 and the Pi camera: the
error paths only (no such device here)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from apps.smart_camera import Capture, Frame, SourceError, SourceLost, open_source
from apps.smart_camera._sources import opencv_has_gstreamer  # internal: which path is taken

pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
APT = "scripts/system-deps.sh installs it"
needs_gst = pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None,
    reason=f"gst-launch-1.0 is not installed (gstreamer1.0-tools; {APT})",
)
#: SMPTE bars, left to right (videotestsrc's default pattern): white, yellow, cyan, green,
#: magenta, red, blue.
BARS = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255),
        (255, 0, 0), (0, 0, 255)]  # fmt: skip


def _bars(frame: np.ndarray) -> list[tuple[int, ...]]:
    """The colour at the middle of each of the 7 top bars."""
    h, w = frame.shape[:2]
    return [tuple(int(v) for v in frame[h // 6, int((i + 0.5) * w / 7)]) for i in range(7)]


def _near(got: Sequence[tuple[int, ...]], want: Sequence[tuple[int, ...]], tol: int) -> bool:
    return bool(np.abs(np.asarray(got) - np.asarray(want)).max() <= tol)


@needs_gst
def test_pipeline_frames_are_the_pipelines_pictures() -> None:
    src = open_source(
        "videotestsrc num-buffers=20 ! video/x-raw,width=160,height=120,framerate=30/1"
    )
    assert src.live and src.fps == 30.0
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    assert len(frames) == 20  # the pipeline's end (EOS) ends the source
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert _near(_bars(frames[0]), BARS, 40), _bars(frames[0])
    # OpenCV-style pipelines end in appsink; without caps the frames come at 640x480
    src = open_source("videotestsrc num-buffers=2 ! videoconvert ! appsink")
    f = src.read()
    src.close()
    assert f is not None and f.shape == (480, 640, 3)
    assert _near(_bars(f), BARS, 40)


@needs_gst
def test_pipeline_errors_are_clear_and_bounded() -> None:
    t0 = time.monotonic()
    with pytest.raises(SourceError, match='no element "nosuchelement"'):
        open_source("videotestsrc ! nosuchelement")
    assert time.monotonic() - t0 < 10  # gst-launch's own message, not a timeout
    with pytest.raises(SourceError, match="No closing quotation"):
        open_source("filesrc location='a.mp4 ! decodebin")
    with pytest.raises(SourceError, match="1 or more"):
        open_source("videotestsrc ! video/x-raw,width=0,height=10")
    # a pipeline that starts but never delivers a frame: an error after timeout_s
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"no frame from the pipeline for 1\.5 s"):
        open_source("videotestsrc ! identity sleep-time=60000000", timeout_s=1.5)
    assert 1.4 < time.monotonic() - t0 < 8


def test_pipeline_without_gst_launch_names_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if opencv_has_gstreamer():  # pip's OpenCV has none; a system OpenCV may
        pytest.skip("this OpenCV has a GStreamer backend: gst-launch-1.0 is not used")
    monkeypatch.setenv("PATH", str(tmp_path))  # no gst-launch-1.0 on it
    with pytest.raises(
        SourceError, match=r"needs gst-launch-1\.0.*apt-get install gstreamer1\.0-tools"
    ):
        open_source("videotestsrc ! video/x-raw,width=64,height=48")


@needs_gst
def test_app_on_a_pipeline(fmnist_fast_pkg: Path, tmp_path: Path) -> None:
    log = tmp_path / "gst.jsonl"
    pipeline = "videotestsrc num-buffers=60 ! video/x-raw,width=112,height=112,framerate=30/1"
    proc = subprocess.run(
        [sys.executable, "-m", "apps.smart_camera", str(fmnist_fast_pkg), "--source", pipeline,
         "--no-web", "--log", str(log)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = re.search(
        r"(\d+) frames, (\d+) classified, (\d+) from the cache, (\d+) dropped", proc.stdout
    )
    assert m, proc.stdout
    frames, classified, cached, dropped = (int(v) for v in m.groups())
    lines = log.read_text().splitlines()
    assert frames == 60 and len(lines) == classified + cached == 60 - dropped > 0


# ---- RTSP ----------------------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")  # a free port, printed
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,"
                   "framerate=30/1 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
print(server.get_bound_port(), flush=True)
GLib.MainLoop().run()
"""


def _rtsp_server_missing() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return f"no {SYSTEM_PYTHON} (the RTSP server runs in Debian's python3-gi)"
    check = (
        'import gi; gi.require_version("GstRtspServer", "1.0"); '
        "from gi.repository import GstRtspServer"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, timeout=60)
    if r.returncode:
        return f"python3-gi or gir1.2-gst-rtsp-server-1.0 is not installed ({APT})"
    return None


@pytest.fixture
def rtsp_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A real GStreamer RTSP server on loopback: its URL (SMPTE bars, 320x240 MJPEG over
    RTP, 30 frames/s) and its process."""
    missing = _rtsp_server_missing()
    if missing:
        pytest.skip(missing)
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", RTSP_SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), proc.stderr.read() if proc.stderr else port
        yield f"rtsp://127.0.0.1:{port}/test", proc
    finally:
        proc.send_signal(signal.SIGCONT)  # if a test froze it
        proc.kill()
        proc.communicate(timeout=30)


def test_rtsp_stream(rtsp_server: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = rtsp_server
    src = open_source(url, timeout_s=10)
    assert src.live and src.fps == 30.0
    frames = [src.read() for _ in range(15)]
    src.close()
    f = frames[-1]
    assert f is not None and f.shape == (240, 320, 3)
    assert _near(_bars(f), BARS, 60), _bars(f)  # JPEG over RTP: the bars, give or take


def test_app_on_rtsp(
    fmnist_fast_pkg: Path, rtsp_server: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, _ = rtsp_server
    log = tmp_path / "rtsp.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "apps.smart_camera", str(fmnist_fast_pkg), "--source", url,
         "--frames", "40", "--no-web", "--log", str(log)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "smart camera: 40 frames" in proc.stdout
    assert len(log.read_text().splitlines()) > 0
    assert "Traceback" not in proc.stderr and "WARN" not in proc.stderr


def test_rtsp_capture_newest_frame_only(rtsp_server: tuple[str, subprocess.Popen[str]]) -> None:
    """A live 30 frames/s stream: a handler that keeps up runs on the capture thread (no
    hand-off); one of 100 ms gets the newest frame only, the others counted as dropped."""
    url, _ = rtsp_server
    for work_s in (0.0, 0.1):
        got: list[str] = []

        def handle(f: Frame, work_s: float = work_s, got: list[str] = got) -> None:
            got.append(threading.current_thread().name)
            time.sleep(work_s)

        cap = Capture(open_source(url, timeout_s=10), max_frames=60).start()
        cap.serve(handle)
        cap.stop()
        assert cap.error is None and cap.captured == 60 and len(got) + cap.dropped == 60
        if work_s == 0:
            assert cap.dropped <= 3 and got.count("capture") >= 50, (cap.dropped, got)
        else:  # 2 s of stream, 100 ms a frame: about 20 handled, 40 dropped
            assert cap.dropped >= 25 and got.count("capture") == 0, (cap.dropped, got)


def test_rtsp_server_freezes_then_comes_back(
    rtsp_server: tuple[str, subprocess.Popen[str]],
) -> None:
    """The server stops answering (SIGSTOP): the read gives up after the timeout, the capture
    reopens with backoff, and carries on once the server is back (SIGCONT)."""
    url, server = rtsp_server
    got: list[Frame] = []
    cap = Capture(open_source(url, timeout_s=1.5), retries=6, backoff_s=0.3, max_frames=60)
    cap.start()
    serving = threading.Thread(target=cap.serve, args=(got.append,), daemon=True)
    serving.start()
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) >= 20
    server.send_signal(signal.SIGSTOP)
    time.sleep(2.5)
    server.send_signal(signal.SIGCONT)
    serving.join(60)
    cap.stop()
    assert not serving.is_alive()
    assert cap.error is None and cap.reconnects >= 1 and cap.captured == 60
    assert len(got) + cap.dropped == 60


def test_rtsp_server_gone_for_good_is_a_clear_error(
    rtsp_server: tuple[str, subprocess.Popen[str]],
) -> None:
    url, server = rtsp_server
    cap = Capture(open_source(url, timeout_s=1.5), retries=2, backoff_s=0.2).start()
    got: list[Frame] = []
    t = threading.Thread(target=cap.serve, args=(got.append,), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.send_signal(signal.SIGSTOP)  # it accepts connections and never answers
    t0 = time.monotonic()
    t.join(60)
    waited = time.monotonic() - t0
    cap.stop()
    assert not t.is_alive() and len(got) >= 5
    assert cap.error is not None
    assert f"{url} sent no frame for 1.5 s; gave up after 2 attempts" in cap.error
    # one read timeout, then 2 x (backoff + open timeout): about 5 s, not a hang
    assert 4.0 < waited < 20


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_dead_urls_fail_within_the_timeout(silent_port: int) -> None:
    for url in (f"rtsp://127.0.0.1:{silent_port}/cam", f"http://127.0.0.1:{silent_port}/x.mjpg"):
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer within 2 s") as e:
            open_source(url, timeout_s=2)
        assert 1.8 < time.monotonic() - t0 < 8, url
        assert not isinstance(e.value, SourceLost)


def test_app_on_a_dead_url_says_so(fmnist_fast_pkg: Path, silent_port: int) -> None:
    url = f"rtsp://127.0.0.1:{silent_port}/cam"
    proc = subprocess.run(
        [sys.executable, "-m", "apps.smart_camera", str(fmnist_fast_pkg), "--source", url,
         "--source-timeout", "2", "--no-web"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"cannot open the camera '{url}': no answer within 2 s" in proc.stderr
    assert "Traceback" not in proc.stderr and "WARN" not in proc.stderr


# ---- V4L2 and the Pi camera: no device here, so their error paths ---------------------------


def test_v4l2_and_picam_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceError, match=r"'/dev/video99'.*is it plugged in.*group 'video'"):
        open_source("/dev/video99")
    with pytest.raises(SourceError, match=r"picam size 'big' is not WIDTHxHEIGHT"):
        open_source("picam:big")
    # without picamera2 (a PC): how to get it; with it but no camera: picamera2's reason
    with pytest.raises(
        SourceError, match=r"apt install python3-picamera2|cannot open the Pi camera"
    ):
        open_source("picam")
    with pytest.raises(SourceError, match="timeout must be positive"):
        open_source("rtsp://127.0.0.1:1/x", timeout_s=0)
