"""The smart camera app (apps/smart_camera) with real components: OpenCV video files, image
folders, the test:// stream, the stdlib web server (MJPEG and JSON over real sockets) and
the real runtime."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import edgekit
from apps.smart_camera import (
    Camera,
    CameraConfig,
    Capture,
    SourceError,
    WebView,
    open_source,
)
from apps.smart_camera._sources import FASHION_HARD, HARD_MIX  # internal: the hard test:// mixes

cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "seq", "time", "label", "name", "score", "exit", "stages_run", "latency_ms", "glass_ms",
    "offloaded", "split", "bytes_sent", "fallback", "cached", "where", "truth",
}  # fmt: skip


@pytest.fixture(scope="module")
def pkg(fmnist_fast_pkg: Path) -> Path:
    return fmnist_fast_pkg


def _frames(n: int, zoom: int = 4, seed: int = 3) -> list[np.ndarray]:
    src = open_source(f"test://fashion-mnist?zoom={zoom}", seed=seed)
    return [np.stack([src.read()] * 3, axis=-1) for _ in range(n)]  # type: ignore[list-item]


def _video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    assert out.isOpened()
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _video(tmp_path_factory.mktemp("video") / "clip.avi", _frames(60))


def _app(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "apps.smart_camera", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    for _ in range(20):
        line = proc.stdout.readline()
        m = re.search(r"page at (http://\S+/)", line)
        if m:
            return m.group(1)
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no page URL printed: {proc.stderr.read() if proc.stderr else ''}")


def _get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _mjpeg_parts(url: str, n: int) -> list[bytes]:
    """Read ``n`` JPEG parts of /stream.mjpg, parsing the multipart framing by hand."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", "/stream.mjpg")
    r = c.getresponse()
    assert r.status == 200
    boundary = r.getheader("Content-Type", "").split("boundary=")[1]
    parts: list[bytes] = []
    try:
        while len(parts) < n:
            line = r.fp.readline().strip()
            if not line:
                continue
            assert line == f"--{boundary}".encode(), line
            headers = {}
            while (h := r.fp.readline().strip()) != b"":
                k, _, v = h.decode().partition(":")
                headers[k.lower()] = v.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(r.fp.read(int(headers["content-length"])))
    finally:
        c.close()
    return parts


def test_video_file_cli_log_stream_and_api(pkg: Path, clip: Path, tmp_path: Path) -> None:
    log = tmp_path / "out.jsonl"
    proc = _app([str(pkg), "--source", str(clip), "--fps", "20", "--port", "0", "--no-cache",
                 "--log", str(log), "--record", str(tmp_path / "out.avi")])  # fmt: skip
    try:
        url = _url(proc)
        parts = _mjpeg_parts(url, 2)
        for p in parts:
            im = Image.open(io.BytesIO(p))
            im.load()
            assert im.format == "JPEG" and min(im.size) >= 240  # enlarged, annotated frames
        assert not np.array_equal(np.asarray(Image.open(io.BytesIO(parts[0]))),
                                  np.asarray(Image.open(io.BytesIO(parts[1]))))  # fmt: skip
        status, hdrs, body = _get(url, "/api/latest")
        assert status == 200 and hdrs["content-type"] == "application/json"
        assert set(json.loads(body)) >= KEYS
        status, _, body = _get(url, "/api/stats")
        s = json.loads(body)
        assert status == 200 and s["frames"] >= 1 and s["running"] is True
        assert s["arm"] is not None and "threshold" in json.dumps(s["arm"])
        assert s["model"]["policy"].startswith("bandit")
        assert _get(url, "/nope")[0] == 404
        status, _, body = _get(url, "/")
        assert status == 200 and b"<canvas" in body
        host, port = url.split("//")[1].rstrip("/").split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("POST", "/api/stats", body=b"x")
        assert c.getresponse().status == 405
        c.close()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "60 frames, 60 classified, 0 from the cache, 0 dropped" in out
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 60 and [r["seq"] for r in lines] == list(range(1, 61))
    rec = cv2.VideoCapture(str(tmp_path / "out.avi"))  # the annotated video
    assert int(rec.get(cv2.CAP_PROP_FRAME_COUNT)) == 60 and rec.read()[1].shape[0] >= 240
    rec.release()
    for r in lines:
        assert set(r) == KEYS
        assert 0 <= r["exit"] <= 3 and 0.0 <= r["score"] <= 1.0 and r["glass_ms"] > 0
        assert r["where"] == f"exit {r['exit']}" and r["offloaded"] is False


def _run_camera(model: Any, source: Any, cfg: CameraConfig, **kw: Any) -> tuple[Camera, list[Any]]:
    results: list[Any] = []
    cap = Capture(source, **kw).start()
    cam = Camera(model, cap, cfg, on_result=results.append)
    cam.run()
    cap.stop()
    return cam, results


def test_image_folder_every_image_once(pkg: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    frames = _frames(12, zoom=2)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / ("sub" if i % 2 else "") / f"img{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    log = tmp_path / "folder.jsonl"
    with edgekit.load(pkg, policy="threshold:0.8") as model:
        cam, results = _run_camera(
            model,
            open_source(str(folder)),
            CameraConfig(cache_threshold=None, log=log, record=tmp_path / "rec"),
        )
        # the same images straight through the model, in the folder's sorted order
        files = sorted(folder.rglob("*.png"))
        want = [
            model.predict(
                np.asarray(Image.open(p).convert("L").resize((28, 28), Image.Resampling.BOX))
            ).label
            for p in files
        ]
    assert [r.label for r in results] == want
    assert len(log.read_text().splitlines()) == 12
    assert cam.stats()["classified"] == 12
    recorded = sorted((tmp_path / "rec").glob("frame_*.jpg"))  # the annotated sequence
    assert len(recorded) == 12 and min(Image.open(recorded[0]).size) >= 240


def test_temporal_caching_saves_frames_and_changes_nothing(pkg: Path, tmp_path: Path) -> None:
    frames = [f for f in _frames(15, seed=7) for _ in range(4)]  # a scene holds for 4 frames
    video = _video(tmp_path / "repeats.avi", frames)
    with edgekit.load(pkg, policy="threshold:0.8") as model:
        every, r_every = _run_camera(
            model, open_source(str(video)), CameraConfig(cache_threshold=None)
        )
    with edgekit.load(pkg, policy="threshold:0.8") as model:
        cached, r_cached = _run_camera(
            model, open_source(str(video)), CameraConfig(cache_threshold=0.01)
        )
    assert len(r_every) == len(r_cached) == 60
    s = cached.stats()
    assert s["cached"] >= 40 and s["cached"] + s["classified"] == 60
    assert s["where"]["cached"] == s["cached"]
    assert [(r.label, r.exit) for r in r_cached] == [(r.label, r.exit) for r in r_every]
    assert every.stats()["cached"] == 0


def test_test_stream_changes_its_mix(pkg: Path) -> None:
    src = open_source("test://fashion-mnist?phase=100&n=400&zoom=1")
    with edgekit.load(pkg, policy="bandit") as model:
        cam, results = _run_camera(model, src, CameraConfig(cache_threshold=None))
    assert len(results) == 400
    hard = [
        np.mean([r.truth in FASHION_HARD for r in results[i : i + 100]]) for i in range(0, 400, 100)
    ]
    for got, want in zip(hard, HARD_MIX):
        assert abs(got - want) < 0.15, (hard, HARD_MIX)
    accuracy = np.mean([r.label == r.truth for r in results])
    assert accuracy > 0.6
    assert sum(cam.stats()["model"]["exit_histogram"]) == 400


def test_realtime_source_keeps_only_the_newest_frame(pkg: Path) -> None:
    """A camera that outpaces the model: frames are dropped (and counted), never queued."""
    src = open_source("test://fashion-mnist?n=300&zoom=1")

    class Slow:  # the model, 5 ms per frame
        def __init__(self, m: Any) -> None:
            self.m, self.manifest = m, m.manifest

        def predict(self, x: np.ndarray) -> Any:
            time.sleep(0.005)
            return self.m.predict(x)

        def stats(self) -> dict[str, Any]:
            return dict(self.m.stats())

    with edgekit.load(pkg, policy="full") as model:
        cam, results = _run_camera(
            Slow(model), src, CameraConfig(cache_threshold=None), realtime=True, fps=1000
        )
    s = cam.stats()
    assert s["frames"] == 300 and s["dropped"] > 100
    assert s["results"] + s["dropped"] == 300
    assert cam.capture.inline == 0  # too slow for the capture thread to classify frames itself
    # Queued, the last of 300 frames would be ~1.2 s stale (300 x 5 ms, less the 0.3 s of
    # capture); kept newest-only, each is about one predict old. 400 ms leaves room for a
    # loaded runner while still failing on a queue.
    assert max(r.glass_ms for r in results) < 400


def test_capture_thread_classifies_while_the_model_keeps_up(pkg: Path) -> None:
    """A camera at 50 frames/s and a model that keeps up: the capture thread classifies each
    frame itself (no hand-off to a second thread), nothing is dropped. When the model turns
    slower than the camera (60 ms a frame from frame 100 on), frames go to the other thread,
    the newest only, and the drops are counted. Never two frames in the model at once."""
    src = open_source("test://fashion-mnist?n=200&zoom=1")
    threads: list[str] = []
    inside = [0, 0]  # frames in predict now, the most at once

    class Model:  # the real model; slow from the 101st frame
        def __init__(self, m: Any) -> None:
            self.m, self.manifest = m, m.manifest

        def predict(self, x: np.ndarray) -> Any:
            inside[0] += 1
            inside[1] = max(inside)
            threads.append(threading.current_thread().name)
            try:
                if len(threads) > 100:
                    time.sleep(0.06)
                return self.m.predict(x)
            finally:
                inside[0] -= 1

        def stats(self) -> dict[str, Any]:
            return dict(self.m.stats())

    with edgekit.load(pkg, policy="full") as model:
        cam, results = _run_camera(
            Model(model), src, CameraConfig(cache_threshold=None), realtime=True, fps=50
        )
    s = cam.stats()
    assert inside[1] == 1
    assert s["frames"] == 200 and s["results"] + s["dropped"] == 200
    fast = [r for r in results if r.seq <= 100]
    assert threads[:100].count("capture") >= 80, threads[:100]  # classified where it was read
    assert len(fast) >= 95  # kept up: (almost) nothing dropped
    assert max(r.glass_ms for r in fast) < 60  # no queueing behind the capture thread
    assert s["dropped"] > 30 and "MainThread" in threads[100:]  # slow: handed over, newest only
    assert cam.capture.inline == threads.count("capture")


def test_camera_unplugged_retries_then_clear_error(pkg: Path, tmp_path: Path) -> None:
    from apps.smart_camera._sources import VideoSource  # internal: a file read as a live camera

    video = _video(tmp_path / "cam.avi", _frames(5))
    src = VideoSource(str(video), live=True, loop=False)  # reads like a camera: the end = unplugged
    with edgekit.load(pkg, policy="full") as model:
        cam, results = _run_camera(
            model, src, CameraConfig(cache_threshold=None), retries=3, backoff_s=0.02, max_frames=12
        )
    s = cam.stats()  # reopened twice and kept going (a live source drops what it must)
    assert s["reconnects"] == 2 and s["frames"] == 12 and s["results"] + s["dropped"] == 12
    assert s["error"] is None and len(results) == s["results"]
    src = VideoSource(str(video), live=True, loop=False)
    video.unlink()  # now it cannot be reopened
    with edgekit.load(pkg, policy="full") as model:
        cam, results = _run_camera(
            model, src, CameraConfig(cache_threshold=None), retries=3, backoff_s=0.02
        )
    assert len(results) + cam.stats()["dropped"] == 5
    assert cam.error is not None and "gave up after 3 attempts" in cam.error


def test_network_camera_goes_away_mid_stream(pkg: Path, tmp_path: Path) -> None:
    """A live source over the network (the MJPEG stream of another camera app, read by
    OpenCV) that dies: reconnection attempts with backoff, then a clear message."""
    upstream = _app([str(pkg), "--source", "test://fashion-mnist", "--loop", "--fps", "30",
                     "--port", "0", "--duration", "4"])  # fmt: skip
    try:
        url = _url(upstream)
        log = tmp_path / "live.jsonl"
        proc = _app([str(pkg), "--source", url + "stream.mjpg", "--no-web", "--retries", "2",
                     "--backoff", "0.2", "--log", str(log)])  # fmt: skip
        _, err = proc.communicate(timeout=90)
    finally:
        upstream.kill()
        upstream.wait()
    assert proc.returncode == 1, err
    assert "stopped delivering frames; gave up after 2 attempts" in err
    assert "Traceback" not in err and "[tcp @" not in err
    assert len(log.read_text().splitlines()) > 10  # it classified the live stream first


def test_clear_errors_without_traceback(pkg: Path, tmp_path: Path) -> None:
    proc = _app([str(pkg), "--source", str(tmp_path / "missing.mp4"), "--no-web"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    proc = _app([str(pkg), "--source", str(tmp_path / "broken.mp4"), "--no-web"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "cannot open the video" in err and "Traceback" not in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = _app([str(pkg), "--source", "test://fashion-mnist", "--port", str(port)])
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"port {port}" in err and "already in use" in err
    assert "Traceback" not in err
    proc = _app([str(pkg), "--source", "/dev/video99", "--no-web"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "/dev/video99" in err and "Traceback" not in err


@pytest.fixture
def live_camera(pkg: Path) -> Iterator[tuple[Camera, WebView]]:
    model = edgekit.load(pkg, policy="bandit")
    cap = Capture(open_source("test://fashion-mnist?phase=60", loop=True), fps=40).start()
    cam = Camera(model, cap, CameraConfig())
    t = threading.Thread(target=cam.run, daemon=True)
    t.start()
    web = WebView(cam, "127.0.0.1", 0).start()
    try:
        yield cam, web
    finally:
        web.close()
        cam.stop()
        t.join(10)
        cap.stop()
        model.close()


def test_page_in_headless_chromium(live_camera: tuple[Camera, WebView], tmp_path: Path) -> None:
    from _browser import Browser

    cam, web = live_camera
    with Browser(tmp_path) as b:
        errors = b.open(web.url, settle_s=4.0)
        assert errors == [], errors
        assert b.evaluate("document.getElementById('stream').naturalWidth") >= 240
        painted = """(id => { const c = document.getElementById(id);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })"""
        assert b.evaluate(painted + "('where')") > 500  # bars drawn
        assert b.evaluate(painted + "('latency')") > 100  # a line drawn
        assert "threshold" in b.evaluate("document.getElementById('arm').textContent")
        png = b.screenshot()
        b.pump(1.0)
        assert b.errors == [], b.errors
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    (tmp_path / "page.png").write_bytes(png)
    a = np.asarray(shot)
    assert a.shape[0] >= 600 and a.std() > 20  # not a blank page
    stream = a[60:300, 20:260]  # where the stream image sits
    assert stream.std() > 20
    assert cam.stats()["results"] > 50


def test_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="has no images"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="unknown test source"):
        open_source("test://cifar")
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="cannot read image"):
        open_source(str(tmp_path / "x.png")).read()
