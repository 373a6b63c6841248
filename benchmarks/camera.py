"""Smart camera benchmark: the app end to end next to a bare ``predict`` loop, in one run.

    python -m benchmarks.camera [--package build/fmnist.edgepkg] [--out build/bench]

Both read the same video file (Fashion-MNIST test images as 224x224 frames, MJPG) with
OpenCV and run the same package under the same policy; the bare loop does read, convert,
resize and ``predict`` in one thread, the app its capture thread, preprocessing, temporal
caching, result records, stats and the JSON-lines log (no web viewer connected: frames are
JPEG-encoded only for viewers). Measured, alternating app and loop over ``--rounds``:

- frames/s over the whole file, caching off (target: the app costs at most 15%);
- glass-to-result latency p50/p95 (from the decoded frame to its result), with frames paced
  at half the loop's rate so that nothing queues (target: at most 15% over the loop);
- frames/s with caching on over a file whose scenes hold for 5 frames (target: faster than
  the loop, which classifies every frame).

Prints each ratio next to its target; writes ``camera.json`` and ``camera.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from apps.smart_camera import Camera, CameraConfig, Capture, Preprocessor, open_source

REPEAT = 5


def _video(path: Path, n: int, repeat: int) -> Path:
    import cv2

    src = open_source("test://fashion-mnist", seed=11)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (224, 224))
    for _ in range(n // repeat):
        f = src.read()
        assert f is not None
        bgr = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)
        for _ in range(repeat):
            out.write(bgr)
    out.release()
    return path


def bare_loop(pkg: Path, video: Path, policy: str, fps: float | None) -> dict[str, Any]:
    """What a user writes without the app: read, convert, resize, predict."""
    import cv2

    model = edgekit.load(pkg, policy=policy)
    prep = Preprocessor(tuple(model.manifest.input.shape))
    cap = cv2.VideoCapture(str(video))
    lat: list[float] = []
    period = 1.0 / fps if fps else 0.0
    t_start = nxt = time.perf_counter()
    while True:
        if period:
            nxt += period
            time.sleep(max(0.0, nxt - time.perf_counter()))
        ok, frame = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()  # as in the app: from the frame in hand to its result
        model.predict(prep(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
        lat.append((time.perf_counter() - t0) * 1e3)
    wall = time.perf_counter() - t_start
    cap.release()
    model.close()
    return _summary(len(lat), wall, lat)


def app(
    pkg: Path, video: Path, policy: str, fps: float | None, cache: bool, log: Path
) -> dict[str, Any]:
    model = edgekit.load(pkg, policy=policy)
    glass: list[float] = []
    t_start = time.perf_counter()
    cap = Capture(open_source(str(video)), fps=fps).start()
    cfg = CameraConfig(cache_threshold=0.01 if cache else None, log=log)
    cam = Camera(model, cap, cfg, on_result=lambda r: glass.append(r.glass_ms))
    cam.run()
    wall = time.perf_counter() - t_start
    cap.stop()
    s = cam.stats()
    model.close()
    out = _summary(len(glass), wall, glass)
    out["cached"] = s["cached"]
    return out


def _summary(n: int, wall: float, lat: list[float]) -> dict[str, Any]:
    a = np.asarray(lat)
    return {
        "frames": n,
        "fps": n / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
    }


def _row(name: str, value: float, target: str, ok: bool) -> dict[str, Any]:
    print(f"  [{'ok ' if ok else 'MISS'}] {name:<58} {value:7.3f}   target {target}", flush=True)
    return {"name": name, "value": value, "target": target, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="build/fmnist.edgepkg")
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--policy", default="bandit")
    a = ap.parse_args(argv)
    pkg, out = Path(a.package), Path(a.out)
    if not (pkg / "manifest.json").is_file():
        print(f"{pkg} not found: build it first with `make demo`", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"edgekit camera benchmark: {pkg}, {a.frames} frames of 224x224 MJPG, policy {a.policy}")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        plain = _video(t / "plain.avi", a.frames, 1)
        held = _video(t / "held.avi", a.frames, REPEAT)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in
            ("loop", "app", "loop_paced", "app_paced", "loop_held", "app_cached")}  # fmt: skip
        for i in range(a.rounds):
            runs["loop"].append(bare_loop(pkg, plain, a.policy, None))
            runs["app"].append(app(pkg, plain, a.policy, None, False, t / "log.jsonl"))
            pace = 0.5 * runs["loop"][0]["fps"]
            runs["loop_paced"].append(bare_loop(pkg, plain, a.policy, pace))
            runs["app_paced"].append(app(pkg, plain, a.policy, pace, False, t / "log.jsonl"))
            runs["loop_held"].append(bare_loop(pkg, held, a.policy, None))
            runs["app_cached"].append(app(pkg, held, a.policy, None, True, t / "log.jsonl"))
            print(f"  round {i + 1}/{a.rounds}: loop {runs['loop'][-1]['fps']:.0f} frames/s, "
                  f"app {runs['app'][-1]['fps']:.0f} frames/s", flush=True)  # fmt: skip
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    for k, v in med.items():
        print(
            f"  {k:<11} {v['fps']:8.1f} frames/s  p50 {v['p50_ms']:.3f}  p95 {v['p95_ms']:.3f} ms"
        )
    fps = med["app"]["fps"] / med["loop"]["fps"]
    p50 = med["app_paced"]["p50_ms"] / med["loop_paced"]["p50_ms"]
    p95 = med["app_paced"]["p95_ms"] / med["loop_paced"]["p95_ms"]
    cached = med["app_cached"]["fps"] / med["loop_held"]["fps"]
    rows = [
        _row("app / loop frames/s, caching off", fps, ">= 0.85", fps >= 0.85),
        _row("app / loop latency p50, paced, caching off", p50, "<= 1.15", p50 <= 1.15),
        _row("app / loop latency p95, paced, caching off", p95, "<= 1.15", p95 <= 1.15),
        _row(
            f"app (caching) / loop frames/s, scenes held {REPEAT} frames", cached, "> 1", cached > 1
        ),
    ]
    result = {"package": str(pkg), "frames": a.frames, "rounds": a.rounds, "policy": a.policy,
              "median": med, "runs": runs, "rows": rows}  # fmt: skip
    (out / "camera.json").write_text(json.dumps(result, indent=1))
    _plot(out / "camera.png", med)
    print(f"  wrote {out / 'camera.json'} and {out / 'camera.png'}")
    return 0


def _plot(path: Path, med: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [
        ("loop", "app", "caching off"),
        ("loop_held", "app_cached", f"held {REPEAT}, caching on"),
    ]
    xs = np.arange(len(names))
    ax1.bar(xs - 0.2, [med[a]["fps"] for a, _, _ in names], 0.4, label="bare predict loop")
    ax1.bar(xs + 0.2, [med[b]["fps"] for _, b, _ in names], 0.4, label="smart camera app")
    ax1.set_xticks(xs, [n for _, _, n in names])
    ax1.set_ylabel("frames/s")
    ax1.legend()
    ax2.bar([0, 1], [med["loop_paced"]["p50_ms"], med["app_paced"]["p50_ms"]], 0.4, label="p50")
    ax2.bar([0.4, 1.4], [med["loop_paced"]["p95_ms"], med["app_paced"]["p95_ms"]], 0.4, label="p95")
    ax2.set_xticks([0.2, 1.2], ["bare loop", "app"])
    ax2.set_ylabel("glass-to-result ms (paced)")
    ax2.legend()
    fig.suptitle("smart camera vs a bare predict loop (same video, same package)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
