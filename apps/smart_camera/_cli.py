"""``python -m apps.smart_camera PKG --source SRC``: the command line."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import edgekit

from ._app import Camera, CameraConfig, Result
from ._capture import Capture
from ._mqtt import MqttEvents, parse_broker
from ._sources import TIMEOUT_S, SourceError, open_source
from ._web import WebError, WebView

__all__ = ["main"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apps.smart_camera",
        description="Classify a camera, video, folder or test stream with an edge package, "
        "headless, with a live web page (annotated MJPEG stream and charts).",
    )
    p.add_argument("package", type=Path, help="an edge package (NAME.edgepkg)")
    p.add_argument(
        "--source",
        default="/dev/video0",
        help="image, folder, video file, /dev/videoN, rtsp://..., a GStreamer pipeline "
        "('videotestsrc ! video/x-raw,width=320,height=240'), picam[:WxH] or "
        "test://fashion-mnist (default /dev/video0)",
    )
    p.add_argument(
        "--source-timeout",
        type=float,
        default=TIMEOUT_S,
        metavar="S",
        help="a network source or pipeline that opens or sends no frame within S seconds "
        f"is lost (default {TIMEOUT_S:g})",
    )
    p.add_argument("--loop", action="store_true", help="repeat a file source")
    p.add_argument("--fps", type=float, help="read a file source at this rate, like a camera")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="keep only the newest frame for a file source too (cameras always do)",
    )
    p.add_argument(
        "--retries", type=int, default=5, help="reopen a lost camera this many times (default 5)"
    )
    p.add_argument(
        "--backoff", type=float, default=0.5, help="first wait before reopening, doubling (0.5 s)"
    )
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--policy", default="bandit", help="exit policy (default bandit)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--state", help="where the bandit keeps what it learned")
    p.add_argument("--offload", help="URL of an `edgekit serve` of the same package")
    p.add_argument("--offload-token")
    p.add_argument(
        "--cache-threshold",
        type=float,
        default=0.01,
        help="reuse the last answer while a 16x16 thumbnail differs by less than this "
        "(mean absolute difference, 0..1; default 0.01)",
    )
    p.add_argument("--no-cache", action="store_true", help="classify every frame")
    p.add_argument(
        "--cache-max-age", type=int, default=30, help="at most this many reuses in a row"
    )
    p.add_argument("--host", default="127.0.0.1", help="web view address (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080, help="web view port (0: any free port)")
    p.add_argument("--no-web", action="store_true", help="no web view")
    p.add_argument("--log", type=Path, help="append one JSON line per frame to this file")
    p.add_argument("--record", type=Path, help="annotated frames: a folder of JPEGs or a .mp4/.avi")
    p.add_argument(
        "--print",
        dest="print_every",
        type=int,
        default=0,
        metavar="N",
        help="print every Nth result",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of test:// streams")
    m = p.add_argument_group("MQTT events (the IoT node's topics and link)")
    m.add_argument("--mqtt", metavar="BROKER[:PORT]", help="publish each result, QoS 1")
    for flag, what in (
        ("device", "DEVICE in edgekit/DEVICE/events (default: this host's name)"),
        ("username", "broker user name"),
        ("password-file", "a file holding the broker password"),
        ("tls-ca", "CA file for TLS (default: the system's CAs)"),
    ):
        m.add_argument(f"--mqtt-{flag}", default="", help=what)
    m.add_argument("--mqtt-tls", action="store_true", help="TLS to the broker (port 8883)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return run(a)
    except (SourceError, WebError, edgekit.EdgekitError, ValueError) as exc:
        hint = getattr(exc, "hint", None)
        print(f"smart camera: error: {exc}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run(a: argparse.Namespace) -> int:
    if a.cache_threshold is not None and not 0 <= a.cache_threshold <= 1:
        raise ValueError(f"--cache-threshold {a.cache_threshold} is not between 0 and 1")
    if a.fps is not None and a.fps <= 0:
        raise ValueError("--fps must be positive")
    if a.retries < 0 or a.backoff <= 0:
        raise ValueError("--retries must be 0 or more and --backoff positive")
    if a.source_timeout <= 0:
        raise ValueError("--source-timeout must be positive")
    source = open_source(a.source, loop=a.loop, seed=a.seed, timeout_s=a.source_timeout)
    opts: dict[str, Any] = {}
    if a.offload:
        opts["offload"] = a.offload
        if a.offload_token:
            opts["offload_token"] = a.offload_token
    model = edgekit.load(a.package, policy=a.policy, backend=a.backend, state=a.state, **opts)
    web: WebView | None = None
    capture = Capture(
        source,
        realtime=True if a.realtime else None,
        fps=a.fps,
        retries=a.retries,
        backoff_s=a.backoff,
        max_frames=a.frames,
    )
    cfg = CameraConfig(
        cache_threshold=None if a.no_cache else a.cache_threshold,
        cache_max_age=a.cache_max_age,
        log=a.log,
        record=a.record,
        duration_s=a.duration,
    )
    sinks = [f for f in (_printer(a.print_every), _mqtt(a, source.name, model)) if f]
    cam = Camera(model, capture, cfg, on_result=_fan_out(sinks))
    try:
        for sink in sinks:
            if isinstance(sink, MqttEvents):
                sink.start()
                print(f"smart camera: events on {sink.cfg.topic('events')} at {a.mqtt}", flush=True)
        if not a.no_web:
            web = WebView(
                cam, a.host, a.port, title=f"edgekit camera: {model.manifest.name}"
            ).start()
            print(
                f"smart camera: page at {web.url} (stream {web.url}stream.mjpg, "
                f"stats {web.url}api/stats)",
                flush=True,
            )
        print(f"smart camera: {model!r} on {source.name}", flush=True)
        _stop_on_signals(cam)
        capture.start()
        cam.run()
    finally:
        capture.stop()
        if web is not None:
            web.close()
        for sink in sinks:
            if isinstance(sink, MqttEvents):
                sink.close()
                m = sink.stats()
                print(
                    f"smart camera: MQTT {m['published']} events published, {m['acked']} "
                    f"acknowledged, {m['skipped']} skipped (broker away or behind)",
                    flush=True,
                )
        model.close()
    s = cam.stats()
    print(
        f"smart camera: {s['frames']} frames, {s['classified']} classified, {s['cached']} from the "
        f"cache, {s['dropped']} dropped; glass-to-result p50 {_ms(s['glass_ms']['p50'])} "
        f"p95 {_ms(s['glass_ms']['p95'])}; where: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["where"].items())),
        flush=True,
    )
    if s["error"]:
        print(f"smart camera: error: {s['error']}", file=sys.stderr)
        return 1
    return 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _printer(every: int) -> Any:
    if every <= 0:
        return None

    def show(r: Result) -> None:
        if r.seq % every == 0:
            print(f"#{r.seq} " + " | ".join(Camera.lines(r)), flush=True)

    return show


def _mqtt(a: argparse.Namespace, source: str, model: Any) -> MqttEvents | None:
    if not a.mqtt:
        return None
    host, port = parse_broker(a.mqtt)
    opts: dict[str, Any] = {"username": a.mqtt_username, "password_file": a.mqtt_password_file}
    if a.mqtt_tls:
        opts.update(tls=True, tls_ca=a.mqtt_tls_ca)
    if a.mqtt_device:
        opts["device"] = a.mqtt_device
    try:
        return MqttEvents(
            host, port, opts.pop("device", None) or _device(), source=source,
            package=model.manifest.name, **opts,
        )  # fmt: skip
    except ImportError as exc:  # paho-mqtt is what is usually missing
        raise ValueError(f"--mqtt needs paho-mqtt ({exc}): pip install 'paho-mqtt>=2'") from exc


def _device() -> str:
    from apps.iot_node.config import Config

    return Config().device


def _fan_out(sinks: list[Any]) -> Any:
    if not sinks:
        return None
    if len(sinks) == 1:
        return sinks[0]

    def every(r: Result) -> None:
        for s in sinks:
            s(r)

    return every


def _stop_on_signals(cam: Camera) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: cam.stop())
