"""Load benchmark of ``edgekit serve``: many simulated devices against one server.

    python -m benchmarks.serve_load --package build/fmnist.edgepkg [--out build/bench]
        [--devices 200] [--seconds 10] [--splits 0,last] [--no-ray]

Every device holds one keep-alive connection and sends one input at a time (binary
KServe v2, its next request as soon as the answer arrives) for a bounded time. Measured
side by side in one run, at split 0 (the device sends the input: the whole network on the
server) and at the last split (only the last stage there): the built-in engine with
dynamic batching and with ``--max-batch 1``, taking turns in rounds; then Ray Serve with 1
and 2 replicas at the first split. Every answer is checked against the
same stages run locally; a wrong or missing answer counts as failed. Prints throughput,
p50/p99 latency and failures, and writes ``serve_load.json`` and ``serve_load.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._kserve import (
    decode_infer_response,
    encode_split_request,
    infer_path,
    model_name,
)
from edgekit._package import read_manifest
from edgekit.data import load_dataset
from edgekit.runtime import Quantizer, backends

TOKEN = "bench-token"


# -- what the devices send, and what they must get back -----------------------------------


@dataclass
class Workload:
    model: str
    bodies: list[bytes]  # full HTTP requests, one per distinct input
    expected: list[np.ndarray]  # logits each input must get back


def make_workload(pkg: Path, dataset: str, split: int, n_inputs: int, host: str) -> Workload:
    m = read_manifest(pkg)
    mod = backends.get("onnxruntime")
    runners = [mod.open_stage(pkg / s.files["onnx"], 1) for s in m.stages]
    dtype = np.dtype(runners[0].input_dtype).name
    q0 = m.stages[0].input.quant
    assert q0 is not None
    x = Quantizer(m.input, q0.as_dtype(dtype)).batch(load_dataset(dataset).x_test[:n_inputs])
    for k in range(split):
        x, _ = runners[k](x)
    q = m.stages[split].input.quant
    assert q is not None
    q = q.as_dtype(dtype)
    h, logits = x, None
    for r in runners[split:]:
        h, logits = r(h)
    lq = m.stages[-1].logits.quant
    assert lq is not None and logits is not None
    zp = np.float32(lq.as_dtype(logits.dtype.name).zero_point)
    expected = (logits.astype(np.float32) - zp) * np.float32(lq.scale)
    name = model_name(m.name, split)
    bodies = []
    for i in range(len(x)):
        body, headers = encode_split_request(x[i : i + 1], scale=q.scale, zero_point=q.zero_point)
        head = f"POST {infer_path(name)} HTTP/1.1\r\nHost: {host}\r\n"
        head += f"Authorization: Bearer {TOKEN}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        bodies.append(head.encode() + body)
    return Workload(name, bodies, [expected[i : i + 1] for i in range(len(x))])


# -- the devices ---------------------------------------------------------------------------


class StaleConnection(ConnectionError):
    """The server closed the connection without a byte of response."""


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise StaleConnection("connection closed before the response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # chunked
        parts = []
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(parts)
    return status, headers, body


async def _device(
    i: int,
    host: str,
    port: int,
    work: Workload,
    verified: dict[int, bytes],
    t_start: float,
    t_end: float,
    tally: Tally,
) -> None:
    k = i % len(work.bodies)
    req = work.bodies[k]
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        try:
            for attempt in (0, 1):
                reused = conn is not None
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reader, writer = conn
                writer.write(req)
                try:
                    status, headers, body = await _read_response(reader)
                    break
                except StaleConnection:
                    # A keep-alive connection the server (or a proxy reloading) closed
                    # before answering: resend once on a new one, as HTTP clients do.
                    writer.close()
                    conn = None
                    if not reused or attempt:
                        raise
                    tally.retries += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            if conn is not None:
                conn[1].close()
            conn = None
            if t0 >= t_start:
                tally.fail(type(exc).__name__)
            await asyncio.sleep(0.01)
            continue
        t1 = time.perf_counter()
        if t0 < t_start or t1 > t_end:
            continue  # warm-up, or finished after the window: not counted
        if status != 200:
            tally.fail(f"HTTP {status}")
            continue
        # Answers to the same input are byte-identical: decode and check the first one
        # against the local stages, then compare bytes.
        ok = verified.get(k)
        if ok is None:
            out = decode_infer_response(body, headers)
            if np.array_equal(out["logits"], work.expected[k]):
                verified[k] = ok = body
        if body != ok:
            tally.fail("wrong answer")
            continue
        tally.latencies.append(t1 - t0)
    if conn is not None:
        conn[1].close()


async def _load(url: str, work: Workload, devices: int, warmup: float, seconds: float) -> Tally:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    tally = Tally()
    verified: dict[int, bytes] = {}
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds
    await asyncio.gather(
        *(
            _device(i, host, int(port), work, verified, t_start, t_end, tally)
            for i in range(devices)
        )
    )
    return tally


def run_load(url: str, work: Workload, devices: int, warmup: float, seconds: float) -> Tally:
    try:
        import uvloop

        return uvloop.run(_load(url, work, devices, warmup, seconds))
    except ImportError:
        return asyncio.run(_load(url, work, devices, warmup, seconds))


def _merge(tallies: list[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.latencies += t.latencies
        out.failed += t.failed
        out.retries += t.retries
        for k, v in t.errors.items():
            out.errors[k] = out.errors.get(k, 0) + v
    return out


def summarize(name: str, tally: Tally, seconds: float, stats: dict[str, Any]) -> dict[str, Any]:
    lat = np.array(tally.latencies) * 1e3
    ms = stats.get("model_stats", [{}])[0] if stats else {}
    res = {
        "requests": len(lat),
        "throughput_rps": len(lat) / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "failed": tally.failed,
        "errors": tally.errors,
        "stale_connection_retries": tally.retries,
        "mean_batch_rows": ms.get("mean_batch_rows"),
    }
    p50 = f"{res['p50_ms']:.1f}" if res["p50_ms"] is not None else "-"
    p99 = f"{res['p99_ms']:.1f}" if res["p99_ms"] is not None else "-"
    mb = res["mean_batch_rows"]
    print(
        f"  {name:<26} {res['throughput_rps']:9.0f} req/s   p50 {p50:>7} ms   p99 {p99:>7} ms"
        f"   failed {res['failed']}"
        + (f"   mean batch {mb:.1f}" if mb else "")
        + (f"   (stale keep-alive resent: {tally.retries})" if tally.retries else ""),
        flush=True,
    )
    return res


def _stats(url: str, model: str) -> dict[str, Any]:
    import http.client

    host, port = url.split("://", 1)[1].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("GET", f"/v2/models/{model}/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.getresponse()
    data = json.loads(r.read()) if r.status == 200 else {}
    c.close()
    return data


# -- the servers ---------------------------------------------------------------------------


class BuiltinProcess:
    """``edgekit serve`` in its own process, as users run it."""

    def __init__(self, pkg: Path, *extra: str) -> None:
        self.cmd = [sys.executable, "-m", "edgekit", "serve", str(pkg), "--port", "0"]
        self.cmd += ["--token", TOKEN, *extra]

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if " on http" in line and "serving" in line:
                url = line.split(" on ", 1)[1].split("/v2", 1)[0]
                break
        else:
            raise RuntimeError(f"the server did not start: {self.cmd}")
        # keep draining stderr so the server never blocks on a full pipe
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        return url

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _splits(text: str, n_stages: int) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        s = n_stages - 1 if part == "last" else int(part)
        if not 0 <= s < n_stages:
            raise SystemExit(f"--splits: {s} is not a split point (0..{n_stages - 1})")
        out.append(s)
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="build/fmnist.edgepkg")
    ap.add_argument("--dataset", help="test images (default: from the package name)")
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per setting")
    ap.add_argument("--rounds", type=int, default=5, help="alternate the builtin settings")
    ap.add_argument("--warmup", type=float, default=1.0, help="per round, not counted")
    ap.add_argument(
        "--splits",
        default="0,last",
        help="split points the devices use (0: send the input; last: only the last stage "
        "on the server); Ray runs on the first",
    )
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Serve settings")
    args = ap.parse_args(argv)
    pkg, out = Path(args.package), Path(args.out)
    if not (pkg / "manifest.json").is_file():
        print(f"{pkg} not found: build a package first (make demo)", file=sys.stderr)
        return 2
    manifest = read_manifest(pkg)
    dataset = args.dataset or ("digits" if "digits" in manifest.name else "fashion-mnist")
    splits = _splits(args.splits, len(manifest.stages))
    out.mkdir(parents=True, exist_ok=True)
    n = args.devices
    load0 = os.getloadavg()[0]
    print(
        f"edgekit serve load: {pkg}, splits {splits}, {n} devices, {args.seconds:g} s per "
        f"setting, {os.cpu_count()} CPUs (load generator on the same machine; load average "
        f"{load0:.1f})",
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    batching = ("--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms))
    settings = {
        f"builtin, batching {args.max_batch}": batching,
        "builtin, --max-batch 1": ("--max-batch", "1"),
    }
    keys = list(settings)
    rounds = max(1, args.rounds)
    per_round = args.seconds / rounds
    ratios: dict[str, dict[str, Any]] = {}
    works = {s: make_workload(pkg, dataset, s, 64, "127.0.0.1") for s in splits}
    # Both servers run at once and take turns under load, in short rounds: on a shared
    # machine, whatever else runs then weighs on both alike. The ratio is the median of
    # the per-round ratios.
    with (
        BuiltinProcess(pkg, *settings[keys[0]]) as url_a,
        BuiltinProcess(pkg, *settings[keys[1]]) as url_b,
    ):
        urls = {keys[0]: url_a, keys[1]: url_b}
        for s in splits:
            work = works[s]
            tallies: dict[str, list[Tally]] = {k: [] for k in settings}
            for _ in range(rounds):
                for name in keys:
                    tallies[name].append(run_load(urls[name], work, n, args.warmup, per_round))
            for name in keys:
                label = f"split {s}: {name}"
                runs[label] = summarize(
                    label, _merge(tallies[name]), args.seconds, _stats(urls[name], work.model)
                )
            per = [
                len(a.latencies) / max(len(b.latencies), 1)
                for a, b in zip(tallies[keys[0]], tallies[keys[1]])
            ]
            ratio = float(np.median(per))
            ratios[f"split {s}"] = {"median": ratio, "per_round": per, "ok": ratio >= 2.0}
            print(
                f"  split {s}: dynamic batching vs batch 1: {ratio:.2f}x throughput (median "
                f"of {rounds} rounds: {', '.join(f'{r:.2f}' for r in per)}; target >= 2x)",
                flush=True,
            )
    result: dict[str, Any] = {
        "package": str(pkg),
        "splits": splits,
        "devices": n,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_at_start": load0,
        "runs": runs,
        "batching_vs_batch1": ratios,
    }
    if not args.no_ray:
        ray_runs = _ray_runs(pkg, works[splits[0]], args)
        runs.update({f"split {splits[0]}: {k}": v for k, v in ray_runs.items()})
        r1, r2 = ray_runs.get("ray serve, 1 replica"), ray_runs.get("ray serve, 2 replicas")
        if r1 and r2:
            result["ray_2_vs_1"] = r2["throughput_rps"] / max(r1["throughput_rps"], 1e-9)
            print(f"  Ray Serve 2 vs 1 replica: {result['ray_2_vs_1']:.2f}x")
    failed = sum(r["failed"] for r in runs.values())
    result["failed_total"] = failed
    result["load_average_at_end"] = os.getloadavg()[0]
    (out / "serve_load.json").write_text(json.dumps(result, indent=2))
    _plot(out / "serve_load.png", result)
    summary = ", ".join(f"{k} {v['median']:.2f}x" for k, v in ratios.items())
    print(
        f"wrote {out / 'serve_load.json'} and {out / 'serve_load.png'}; failed requests: "
        f"{failed}; batching vs batch 1: {summary}"
    )
    return 0 if failed == 0 else 1


def _settle(url: str, seconds: float = 3.0) -> None:
    """After a redeploy: wait until the server answers, then let the proxy settle."""
    import http.client

    host, port = url.split("://", 1)[1].rsplit(":", 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            c.request("GET", "/v2/health/ready", headers={"Authorization": f"Bearer {TOKEN}"})
            ok = c.getresponse().status == 200
            c.close()
            if ok:
                break
        except OSError:
            pass
        time.sleep(0.5)
    time.sleep(seconds)


def _ray_runs(pkg: Path, work: Workload, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("  ray is not installed: skipping Ray Serve (pip install 'edgekit[ray]')")
        return {}
    from edgekit.serve import RayServer, ServeConfig

    cfg = ServeConfig(
        port=0,
        token=TOKEN,
        engine="ray",
        replicas=1,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
    )
    runs = {}
    t0 = time.perf_counter()
    srv = RayServer(pkg, cfg, ray_init={"num_cpus": os.cpu_count(), "include_dashboard": False})
    srv.start()
    _settle(srv.url)
    print(f"  (Ray Serve up in {time.perf_counter() - t0:.0f} s)", flush=True)
    try:
        for replicas in (1, 2):
            if replicas != srv.config.replicas:
                srv.scale(replicas)
                _settle(srv.url)
            name = f"ray serve, {replicas} replica" + ("s" if replicas > 1 else "")
            tally = run_load(srv.url, work, args.devices, args.warmup, args.seconds)
            runs[name] = summarize(name, tally, args.seconds, {})
    finally:
        srv.stop()
    return runs


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    names = list(runs)
    labels = [k.replace(": ", "\n").replace(", ", "\n") for k in names]
    colors = ["C0" if "batching" in k else "C1" if "max-batch 1" in k else "C2" for k in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = a.bar(range(len(names)), [runs[k]["throughput_rps"] for k in names], color=colors)
    a.bar_label(bars, fmt="%.0f", fontsize=8)
    a.set_xticks(range(len(names)), labels, fontsize=7)
    a.set_ylabel("requests / s")
    ratios = "; ".join(f"{k}: {v['median']:.1f}x" for k, v in result["batching_vs_batch1"].items())
    a.set_title(f"{result['devices']} devices; batching vs batch 1: {ratios}", fontsize=9)
    x = np.arange(len(names))
    b.bar(x - 0.2, [runs[k]["p50_ms"] or 0 for k in names], 0.4, label="p50")
    b.bar(x + 0.2, [runs[k]["p99_ms"] or 0 for k in names], 0.4, label="p99")
    b.set_xticks(x, labels, fontsize=7)
    b.set_ylabel("latency (ms)")
    b.set_title(f"latency per request (failed: {result['failed_total']})", fontsize=9)
    b.legend()
    for ax in (a, b):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
