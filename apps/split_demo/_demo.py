"""The split-computing demo: test images through the offloading bandit while the link and
the server change, shown live on the camera's web page and printed per input."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import edgekit
from apps.smart_camera import Camera, CameraConfig, Capture, Result, WebView, open_source
from benchmarks.split import DelayProxy, Link, SlowDevice, check_factor, measure_device

__all__ = ["Phase", "main"]

BIN = Path(sys.executable).parent
SLOW_MS = 40.0  # one way, per chunk: the "slowed server" phase
# The emulated device is this many times slower than this host (see --device-slowdown).
DEVICE_SLOWDOWN = 100.0


@dataclass
class Phase:
    """One step of the demo: a link rate (None: unshaped), an added delay, server up or down."""

    name: str
    mbit: float | None = None
    delay_ms: float = 0.0
    server: str = "up"  # up, killed, restarted
    results: list[Result] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.results)
        where: dict[str, int] = {}
        for r in self.results:
            where[r.where()] = where.get(r.where(), 0) + 1
        lat = sorted(r.glass_ms for r in self.results)
        return {
            "phase": self.name,
            "inputs": n,
            "where": where,
            "offloaded": sum(r.offloaded for r in self.results),
            "fallbacks": sum(r.fallback for r in self.results),
            "bytes_sent": sum(r.bytes_sent for r in self.results),
            "mean_ms": sum(lat) / n if n else None,
            "p95_ms": lat[int(0.95 * (n - 1))] if n else None,
            "first_seq": self.results[0].seq if n else None,
            "last_seq": self.results[-1].seq if n else None,
        }


def plan(names: list[str], shaped: bool) -> list[Phase]:
    """The phases, by name: ``link`` (100, 10, 1 Mbit/s when shaping; else one unshaped
    step), ``slow``, ``kill``, ``back``."""
    out: list[Phase] = []
    for n in names:
        if n == "link":
            if shaped:
                out += [Phase(f"link {r:g} Mbit/s", mbit=r) for r in (100.0, 10.0, 1.0)]
            else:
                out.append(Phase("loopback, unshaped"))
        elif n == "slow":
            out.append(Phase(f"server slowed (+{2 * SLOW_MS:g} ms)", delay_ms=SLOW_MS))
        elif n == "kill":
            out.append(Phase("server killed", server="killed"))
        elif n == "back":
            out.append(Phase("server restarted", server="restarted"))
        else:
            raise ValueError(f"unknown phase {n!r}: choose from link, slow, kill, back")
    return out


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``edgekit serve PKG`` as a child process (optionally inside the link's namespace)."""

    def __init__(self, pkg: Path, host: str, prefix: list[str], log: Path) -> None:
        self.port = _free_port("127.0.0.1" if not prefix else "0.0.0.0")
        self.cmd = [*prefix, str(BIN / "edgekit"), "serve", str(pkg), "--host", host,
                    "--port", str(self.port), "--max-delay-ms", "0", "--threads", "1"]  # fmt: skip
        self.url = f"http://{host}:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"edgekit serve exited ({self.proc.returncode}): {tail}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"edgekit serve did not become ready in {timeout:.0f} s")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def _link(shape: bool) -> Iterator[Link | None]:
    if not shape:
        yield None
        return
    link = Link()
    link.up()
    try:
        yield link
    finally:
        link.down()


class SplitView:
    """The camera's view plus the demo's phase and bytes (what the page shows)."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.phase = "starting"

    def latest(self) -> dict[str, Any] | None:
        return self.cam.latest()

    def stats(self) -> dict[str, Any]:
        s = self.cam.stats()
        off = (s.get("model") or {}).get("offload") or {}
        s["offload"] = {"phase": self.phase, "bytes_sent": off.get("bytes_sent", 0)}
        return s

    def frame_jpeg(self, after: int = 0, timeout: float = 2.0) -> tuple[int, bytes] | None:
        return self.cam.frame_jpeg(after, timeout)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apps.split_demo",
        description="Split computing live: the device's bandit between its own exits and "
        "`edgekit serve`, while the link is stepped and the server slowed, killed and restarted.",
    )
    p.add_argument("package", type=Path)
    p.add_argument("--server", help="use this running `edgekit serve` (no kill/restart phases)")
    p.add_argument("--phases", default="link,slow,kill,back", help="default link,slow,kill,back")
    p.add_argument("--phase-s", type=float, default=8.0, help="seconds per phase (default 8)")
    p.add_argument("--fps", type=float, default=30.0, help="test images per second (default 30)")
    p.add_argument("--policy", default="bandit:swucb")
    p.add_argument("--lam", type=float, default=1.0, help="the bandit's cost weight (default 1)")
    p.add_argument("--timeout-ms", type=float, default=300.0, help="deadline of one offload")
    p.add_argument(
        "--device-slowdown",
        type=float,
        default=DEVICE_SLOWDOWN,
        metavar="K",
        help="every local stage takes K times its median time measured here (it sleeps "
        "the difference): an emulated slower device; 1: this host's speed "
        f"(default {DEVICE_SLOWDOWN:g})",
    )
    p.add_argument("--no-shape", action="store_true", help="no tc tbf even as root")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="web page port (0: any free)")
    p.add_argument("--no-web", action="store_true")
    p.add_argument("--print", dest="print_every", type=int, default=1, metavar="N")
    p.add_argument("--json", type=Path, help="write the per-phase summary here")
    p.add_argument("--log", type=Path, help="one JSON line per input")
    p.add_argument("--workdir", type=Path, default=Path("build/split-demo-app"))
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return run(a)
    except (edgekit.EdgekitError, ValueError, RuntimeError, OSError) as exc:
        print(f"split demo: error: {exc}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    check_factor(a.device_slowdown)
    shaped = not a.no_shape and a.server is None and os.geteuid() == 0
    phases = plan([p.strip() for p in a.phases.split(",") if p.strip()], shaped)
    if a.server and any(p.server != "up" for p in phases):
        raise ValueError(
            "--server: the demo cannot kill a server it did not start; use --phases link,slow"
        )
    a.workdir.mkdir(parents=True, exist_ok=True)
    with _link(shaped) as link:
        server: ServerProcess | None = None
        if a.server:
            upstream = a.server.rstrip("/")
        else:
            host = link.dev_ip if link is not None else "127.0.0.1"
            prefix = link.exec_prefix() if link is not None else []
            server = ServerProcess(a.package, host, prefix, a.workdir / "server.log")
            print(f"split demo: starting edgekit serve on {server.url} ...", flush=True)
            server.start()
            upstream = server.url
        hostport = upstream.partition("://")[2]
        uhost, _, uport = hostport.rpartition(":")
        proxy = DelayProxy("127.0.0.1", (uhost, int(uport)), 0.0)
        try:
            return _stream(a, phases, link, server, proxy)
        finally:
            proxy.close()
            if server is not None:
                server.kill()


def _stream(
    a: argparse.Namespace,
    phases: list[Phase],
    link: Link | None,
    server: ServerProcess | None,
    proxy: DelayProxy,
) -> int:
    url = f"http://127.0.0.1:{proxy.port}"
    device = _device(a)
    model = edgekit.load(
        a.package,
        policy=a.policy,
        offload=url,
        offload_timeout_ms=a.timeout_ms,
        lam=a.lam,
        wrap_stage=device.wrap if device is not None else None,
    )
    source = open_source("test://fashion-mnist", loop=True)
    capture = Capture(source, realtime=False, fps=a.fps)  # every input is answered: none dropped
    current: list[Phase] = [phases[0]]

    def on_result(r: Result) -> None:
        current[0].results.append(r)
        if a.print_every and r.seq % a.print_every == 0:
            where = (
                f"server at split {r.split}" if r.offloaded
                else f"exit {r.exit}" + (" (server unavailable: local)" if r.fallback else "")
            )  # fmt: skip
            print(
                f"#{r.seq:<5} [{current[0].name}] {r.name or r.label} {r.score:.2f}  {where}  "
                f"{r.bytes_sent} B  {r.glass_ms:.1f} ms",
                flush=True,
            )

    cam = Camera(model, capture, CameraConfig(cache_threshold=None, log=a.log), on_result=on_result)
    view = SplitView(cam)
    web = None
    if not a.no_web:
        web = WebView(
            view, a.host, a.port, title=f"edgekit split demo: {model.manifest.name}"
        ).start()
        print(f"split demo: page at {web.url}", flush=True)
    runner = threading.Thread(target=cam.run, name="camera", daemon=True)
    try:
        capture.start()
        runner.start()
        for ph in phases:
            _enter(ph, link, server, proxy)
            current[0] = ph
            view.phase = ph.name
            print(f"split demo: --- {ph.name} ---", flush=True)
            time.sleep(a.phase_s)
        capture.stop()
        runner.join(30)
    finally:
        cam.stop()
        capture.stop()
        if web is not None:
            web.close()
        runner.join(10)
        model.close()
    return _report(a, phases, cam)


def _device(a: argparse.Namespace) -> SlowDevice | None:
    """The emulated slower device (None at this host's own speed), printed in the header."""
    if a.device_slowdown <= 1.0:
        print(
            "split demo: the device is this host at full speed (--device-slowdown 1): the "
            "server is no faster than the device, so offloading rarely pays",
            flush=True,
        )
        return None
    from edgekit.data import load_dataset

    xs = load_dataset("fashion-mnist").x_test[:300]  # the images the stream shows
    device = measure_device(a.package, a.device_slowdown, xs)
    print(f"split demo: {device.describe()}", flush=True)
    return device


def _enter(ph: Phase, link: Link | None, server: ServerProcess | None, proxy: DelayProxy) -> None:
    if link is not None:
        link.shape(ph.mbit if ph.mbit is not None else 100.0, burst="1600b")
    proxy.one_way = ph.delay_ms / 1e3
    if server is not None:
        if ph.server == "killed":
            server.kill()
        elif ph.server == "restarted" and server.proc is None:
            server.start()


def _report(a: argparse.Namespace, phases: list[Phase], cam: Camera) -> int:
    s = cam.stats()
    print(
        f"\n  {'phase':<28} {'inputs':>6} {'offloaded':>9} {'fallback':>8} {'B/input':>8} "
        f"{'mean ms':>8}  where"
    )
    rows = [ph.summary() for ph in phases]
    for r in rows:
        n = r["inputs"] or 1
        where = ", ".join(f"{k} {v / n:.0%}" for k, v in sorted(r["where"].items()))
        mean = "-" if r["mean_ms"] is None else f"{r['mean_ms']:.2f}"
        print(f"  {r['phase']:<28} {r['inputs']:>6} {r['offloaded']:>9} {r['fallbacks']:>8} "
              f"{r['bytes_sent'] / n:>8.0f} {mean:>8}  {where}")  # fmt: skip
    answered = sum(r["inputs"] for r in rows)
    lost = s["frames"] - answered
    print(
        f"\nsplit demo: {answered} of {s['frames']} inputs answered "
        f"({'none lost' if lost == 0 else f'{lost} LOST'}); bandit's arm now: {s['arm']}",
        flush=True,
    )
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "device_slowdown": a.device_slowdown,
                    "phases": rows,
                    "frames": s["frames"],
                    "answered": answered,
                },
                indent=1,
            )
        )
    return 0 if lost == 0 else 1
