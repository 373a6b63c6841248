"""Split-computing benchmark: the device behind a shaped link, the server on the host.

    sudo .venv/bin/python -m benchmarks.split --package build/fmnist-fast.edgepkg --out build/split

Needs root (network namespace, veth pair, ``tc``). The device runs in its own network
namespace, joined to the host by a veth pair whose two ends are both shaped with
``tc qdisc ... tbf rate R burst B latency 400ms`` (R = 1, 10, 100 Mbit/s; this kernel
has no netem, so ``--rtt-ms`` adds fixed latency with a small sleeping TCP proxy in user
space instead). ``edgekit serve`` runs on the host end. For every link setting, the same
test images go through: local-only, full offload (split 0: the input itself), every static
split, and the bandit (after a warm-up), and the table shows mean end-to-end latency as
the caller sees it and bytes sent, with the ratios the issue asks for.

The bucket is ``--burst`` (default 1600 bytes, about one packet): with the 32 kbit of
the usual example, a 900-byte request that finds the bucket full crosses at line rate, so
a policy that offloads now and then never feels a 1 Mbit/s link at all, while one that
always offloads does; the small bucket makes every request pay close to its
serialization time. Policies run in 25 interleaved blocks, and the link rests 30 ms before
each block, so every policy meets the same machine and the same link. The bandits use
``--lam 1`` (cost weighs as much as confidence): for the split-only bandit every arm
answers with the last exit, so lambda only scales the gaps between arms, and a larger
one means less exploration of the slow ones.

The device is this machine's CPU. With ``--device-slowdown F`` (default 10) every local
stage takes F times its measured time here (the runtime runs it, then sleeps (F-1) times
its median time): an emulated slower board; the factor is a parameter, not a measurement
of any board. Without it the server's tail is no faster than the device's, and
offloading could only lose. The device process is pinned to CPU 0 with one interpreter
thread, the server to CPU 1 (``taskset``), so the two do not compete with each other
(other load on a shared host still does); the unsplit single-call path is off on the
device so that every local stage is timed and slowed alike.

``--demo`` (no root): the same device and server on loopback, no shaping, a short run of
local-only vs the bandit with a server (what ``make demo`` shows).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NEVER = math.inf
STATIC = "local", "split:0", "split:1", "split:2", "split:3"
TBF = "burst {burst} latency 400ms"
ROUNDS = 25
SETTLE_S = 0.03
VENV_BIN = Path(sys.executable).parent


# -- the device side (runs in the namespace) ------------------------------------------------


class _Slowed:
    """A stage runner that takes ``extra`` seconds longer than it computes: the device is
    emulated as slower than this host (sleep, then spin the last 0.2 ms for precision)."""

    def __init__(self, run: Any, extra: float) -> None:
        self.run = run
        self.extra = extra
        self.input_dtype = run.input_dtype

    def __call__(self, x: np.ndarray) -> Any:
        out = self.run(x)
        if self.extra > 0:
            end = time.perf_counter() + self.extra
            if self.extra > 4e-4:
                time.sleep(self.extra - 2e-4)
            while time.perf_counter() < end:
                pass
        return out

    def close(self) -> None:
        self.run.close()


def _policy_args(name: str, lam: float) -> tuple[str, dict[str, Any], bool]:
    """(policy spec, options, uses the server) of a benchmark policy name."""
    if name == "local":
        return "full", {}, False
    if name == "local-bandit":
        return "bandit", {"lam": lam}, False
    if name == "bandit-split":  # where to split only: every arm answers with the last exit
        return "bandit", {"lam": lam, "arms": (NEVER,)}, True
    if name.startswith("bandit-split:"):
        return "bandit:" + name.split(":", 1)[1], {"lam": lam, "arms": (NEVER,)}, True
    if name == "bandit":  # (split, threshold) pairs: early exits and offload together
        return "bandit", {"lam": lam}, True
    return name, {}, True


def _device_model(pkg: Path, name: str, url: str, lam: float, slowdown: float, stage_s: Any) -> Any:
    import edgekit

    spec, opts, remote = _policy_args(name, lam)
    kw: dict[str, Any] = {"offload": url, "offload_timeout_ms": 5000.0} if remote else {}

    def slowed(k: int, runner: Any) -> Any:
        return _Slowed(runner, (slowdown - 1) * stage_s[k])

    wrap = slowed if slowdown > 1 else None
    # unsplit=False: every local stage timed (and slowed) alike
    return edgekit.load(
        pkg, backend="litert", policy=spec, threads=1, wrap_stage=wrap, unsplit=False, **kw, **opts
    )


def _stream(m: Any, xs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    n = len(xs)
    lat = np.zeros(n)
    sent = np.zeros(n, np.int64)
    split = np.full(n, -1)
    fallback = np.zeros(n, bool)
    correct = np.zeros(n, bool)
    exits = np.zeros(n, np.int64)
    score = np.zeros(n)
    for i in range(n):
        t0 = time.perf_counter()
        p = m.predict(xs[i])
        lat[i] = time.perf_counter() - t0
        sent[i] = p.bytes_sent
        split[i] = p.split if p.offloaded else -1
        fallback[i] = p.fallback
        correct[i] = p.label == y[i]
        exits[i] = p.exit
        score[i] = p.score
    return {
        "score": score,
        "lat": lat,
        "sent": sent,
        "split": split,
        "fallback": fallback,
        "correct": correct,
        "exits": exits,
    }


def _summary(r: dict[str, Any], n_stages: int) -> dict[str, Any]:
    lat = r["lat"] * 1e3
    off = r["split"] >= 0
    return {
        "inputs": len(lat),
        "mean_ms": float(lat.mean()),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "accuracy": float(r["correct"].mean()),
        "confidence": float(r["score"].mean()),
        "bytes_per_input": float(r["sent"].mean()),
        "bytes_per_offload": float(r["sent"][off].mean()) if off.any() else None,
        "offloaded": float(off.mean()),
        "by_split": [int((r["split"] == s).sum()) for s in range(n_stages)],
        "local": int((~off).sum()),
        "fallbacks": int(r["fallback"].sum()),
        "exit_histogram": np.bincount(r["exits"], minlength=n_stages).tolist(),
    }


def _stage_seconds(pkg: Path, xs: np.ndarray) -> list[float]:
    import edgekit
    from edgekit.evaluate import measure_stage_ms

    with edgekit.load(pkg, backend="litert", policy="full", threads=1) as m:
        return (measure_stage_ms(m, xs, 300) / 1e3).tolist()


def worker(args: argparse.Namespace) -> int:
    """One link setting: every policy over the same inputs; JSON to ``--result``.

    The measured inputs go in ``ROUNDS`` blocks, and every policy runs each block in
    turn (interleaved), so that all of them see the same machine and link conditions
    (this host is shared); warm-ups (the bandits learn there) come first.
    """
    from edgekit.data import load_dataset

    pkg = Path(args.package)
    d = load_dataset("fashion-mnist")
    x, y = d.x_test, d.y_test
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    warm = order[: args.warmup]
    meas = order[args.warmup : args.warmup + args.inputs]
    stage_s = _stage_seconds(pkg, x[order[-300:]])
    out: dict[str, Any] = {"stage_ms_here": [s * 1e3 for s in stage_s], "policies": {}}
    n_stages = len(stage_s)
    names = args.policies.split(",")
    models = {
        n: _device_model(pkg, n, args.url, args.lam, args.device_slowdown, stage_s) for n in names
    }
    try:
        for name, m in models.items():
            w = warm if "bandit" in name else warm[: min(30, len(warm))]
            _stream(m, x[w], y[w])
        if args.drift:  # wait for the parent to change the link, then go on
            print("CHANGE", flush=True)
            sys.stdin.readline()
        parts: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        rounds = 1 if args.drift else ROUNDS
        for r, block in enumerate(np.array_split(meas, rounds)):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(SETTLE_S)  # the shaper's bucket refills: every block starts alike
                parts[name].append(_stream(models[name], x[block], y[block]))
        for name, m in models.items():
            res = {k: np.concatenate([p[k] for p in parts[name]]) for k in parts[name][0]}
            s = _summary(res, n_stages)
            s["round_means_ms"] = [float(p["lat"].mean() * 1e3) for p in parts[name]]
            if args.drift:
                s["windows"] = _windows(res, 100)
            st = m.stats()
            if "arms" in st:
                s["best_arm"] = st["arms"]["best"]
                s["arms"] = st["arms"]["arms"]
            if "offload" in st:
                s["client"] = {
                    k: st["offload"][k]
                    for k in ("requests", "failures", "compressed_requests", "bytes_uncompressed")
                }
                s["client"]["bytes_sent_total"] = st["offload"]["bytes_sent"]
            out["policies"][name] = s
            print(
                f"    {name:<18} {s['mean_ms']:8.3f} ms  {s['bytes_per_input']:8.1f} B/input  "
                f"offloaded {s['offloaded']:.2f} {s['by_split']}  acc {s['accuracy']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for m in models.values():
            m.close()
    Path(args.result).write_text(json.dumps(out, default=_jsonable))
    return 0


def _windows(r: dict[str, Any], w: int) -> list[dict[str, float]]:
    out = []
    for i in range(0, len(r["lat"]), w):
        sl = slice(i, i + w)
        out.append(
            {
                "start": i,
                "mean_ms": float(r["lat"][sl].mean() * 1e3),
                "offloaded": float((r["split"][sl] >= 0).mean()),
            }
        )
    return out


# -- the host side ----------------------------------------------------------------------------


class DelayProxy:
    """A TCP proxy that holds every chunk ``one_way`` seconds in each direction: fixed
    latency in user space (no netem here). One thread per direction per connection."""

    def __init__(self, host: str, upstream: tuple[str, int], one_way: float) -> None:
        self.upstream = upstream
        self.one_way = one_way
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.one_way > 0:
                    time.sleep(self.one_way)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Link:
    """A network namespace for the device and a veth pair to the host, shaped with tbf."""

    def __init__(self) -> None:
        n = os.getpid() % 10000
        self.ns = f"eksplit{n}"
        self.host_if, self.dev_if = f"eksh{n}", f"eksd{n}"
        net = 16 + (os.getpid() % 200)
        self.host_ip, self.dev_ip = f"10.213.{net}.1", f"10.213.{net}.2"

    def up(self) -> None:
        _run(["ip", "netns", "add", self.ns])
        _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.dev_if])
        _run(["ip", "link", "set", self.dev_if, "netns", self.ns])
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        ns = ["ip", "netns", "exec", self.ns]
        _run([*ns, "ip", "addr", "add", f"{self.dev_ip}/30", "dev", self.dev_if])
        _run([*ns, "ip", "link", "set", self.dev_if, "up"])
        _run([*ns, "ip", "link", "set", "lo", "up"])

    def shape(self, mbit: float | None, burst: str = "32kbit") -> None:
        """Both directions at ``mbit`` (None: unshaped), with a bucket of ``burst``."""
        for pre, dev in (([], self.host_if), (["ip", "netns", "exec", self.ns], self.dev_if)):
            _run([*pre, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if mbit is not None:
                _run([*pre, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                      f"{mbit}mbit", *TBF.format(burst=burst).split()])  # fmt: skip

    def down(self) -> None:
        _run(["ip", "link", "del", self.host_if], check=False)
        _run(["ip", "netns", "del", self.ns], check=False)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _taskset(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu % (os.cpu_count() or 1))]
    return []


@contextlib.contextmanager
def _server(pkg: Path, host: str, log: Path) -> Iterator[str]:
    """``edgekit serve`` on CPU 1 with no batching delay (one device: nothing to wait for)."""
    port = _free_port(host)
    cmd = [*_taskset(1), str(VENV_BIN / "edgekit"), "serve", str(pkg), "--host", host,
           "--port", str(port), "--max-delay-ms", "0", "--threads", "1"]  # fmt: skip
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"edgekit serve exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"edgekit serve did not become ready: {log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _worker_cmd(a: argparse.Namespace, url: str, policies: str, result: Path) -> list[str]:
    return [*_taskset(0), sys.executable, "-m", "benchmarks.split", "--worker",
            "--package", str(a.package), "--url", url, "--policies", policies,
            "--result", str(result), "--inputs", str(a.inputs), "--warmup", str(a.warmup),
            "--device-slowdown", str(a.device_slowdown), "--lam", str(a.lam),
            "--seed", str(a.seed)]  # fmt: skip


def _input_bytes(pkg: Path, n: int = 200) -> dict[str, float]:
    """Raw, zlib and PNG sizes of test images (what sending the picture itself costs)."""
    from edgekit.data import load_dataset

    x = load_dataset("fashion-mnist").x_test[:n]
    img = np.clip(np.rint(x[..., 0] * 255.0), 0, 255).astype(np.uint8)
    raw = img[0].nbytes
    png = float(np.mean([len(_png(im)) for im in img]))
    z = float(np.mean([len(zlib.compress(im.tobytes(), 9)) for im in img]))
    return {"raw_bytes": raw, "png_bytes": png, "zlib_bytes": z}


def _png(img: np.ndarray) -> bytes:
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    except ImportError:  # a grayscale PNG by hand: signature, IHDR, IDAT, IEND
        import struct

        def chunk(kind: bytes, data: bytes) -> bytes:
            c = struct.pack(">I", len(data)) + kind + data
            return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        h, w = img.shape
        rows = b"".join(b"\x00" + img[i].tobytes() for i in range(h))
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b"")
        )


def _tensor_bytes(pkg: Path) -> list[int]:
    man = json.loads((pkg / "manifest.json").read_text())
    return [int(np.prod(s["input"]["shape"][1:])) for s in man["stages"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="build/fmnist.edgepkg")
    ap.add_argument("--out", default="build/split")
    ap.add_argument("--rates", default="1,10,100", help="Mbit/s, comma-separated")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="extra fixed round trip (proxy)")
    ap.add_argument(
        "--burst",
        default="1600",
        help="tbf bucket (tc units; default 1600 bytes, about one packet: a request that "
        "finds a larger bucket full crosses at line rate, hiding the link's rate)",
    )
    ap.add_argument("--device-slowdown", type=float, default=10.0)
    ap.add_argument("--inputs", type=int, default=500, help="measured inputs per policy")
    ap.add_argument("--warmup", type=int, default=400, help="bandit warm-up inputs")
    ap.add_argument("--lam", type=float, default=1.0, help="the bandits' lambda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--drift-rates",
        default="100,0.25",
        help="FROM,TO Mbit/s: the link drops mid-stream (bandit:ducb follows); 'none' skips",
    )
    ap.add_argument("--demo", action="store_true", help="loopback, no root: a short run")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--drift", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--policies", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    pkg = Path(args.package)
    if not (pkg / "manifest.json").is_file():
        print(
            f"{pkg} not found: build it with `edgekit convert --dataset fashion-mnist "
            f"--out {pkg}` (add --fast for a quicker one)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.demo:
        return demo(args, pkg, out)
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(
            "benchmarks.split needs root for a network namespace, a veth pair and tc "
            f"(running as uid {os.geteuid()}; missing tools: {missing or 'none'}). Run it "
            "as root (sudo .venv/bin/python -m benchmarks.split ...), or use --demo for "
            "an unshaped loopback run.",
            file=sys.stderr,
        )
        return 2
    return bench(args, pkg, out)


def bench(args: argparse.Namespace, pkg: Path, out: Path) -> int:
    rates = [float(r) for r in args.rates.split(",")]
    n_stages = len(_tensor_bytes(pkg))
    static = ["local"] + [f"split:{s}" for s in range(n_stages)]
    policies = [*static, "bandit-split", "local-bandit", "bandit"]
    link = Link()
    result: dict[str, Any] = {
        "package": str(pkg),
        "device_slowdown": args.device_slowdown,
        "rtt_ms_added": args.rtt_ms,
        "tbf": TBF.format(burst=args.burst),
        "inputs": args.inputs,
        "warmup": args.warmup,
        "lambda": args.lam,
        "pinning": "device taskset -c 0 (1 interpreter thread), server taskset -c 1",
        "settings": {},
    }
    print(
        f"split benchmark: {pkg}, device {args.device_slowdown:g}x slower than this host's "
        f"core (emulated), tc tbf {TBF.format(burst=args.burst)}"
        + (f", +{args.rtt_ms:g} ms round trip (user-space proxy)" if args.rtt_ms else ""),
        flush=True,
    )
    link.down()
    link.up()
    proxy = None
    try:
        with _server(pkg, link.host_ip, out / "server.log") as url:
            if args.rtt_ms > 0:
                host, port = link.host_ip, int(url.rsplit(":", 1)[1])
                proxy = DelayProxy(host, (host, port), args.rtt_ms / 2e3)
                url = f"http://{host}:{proxy.port}"
            for rate in rates:
                link.shape(rate, args.burst)
                print(f"  {rate:g} Mbit/s:", flush=True)
                res = out / f"device-{rate:g}mbit.json"
                cmd = [*link.exec_prefix(), *_worker_cmd(args, url, ",".join(policies), res)]
                subprocess.run(cmd, check=True)
                result["settings"][f"{rate:g}"] = json.loads(res.read_text())
            if args.drift_rates != "none":
                fast, slow = (float(v) for v in args.drift_rates.split(","))
                result["drift"] = _drift(args, link, url, fast, slow, out)
    finally:
        if proxy is not None:
            proxy.close()
        link.down()
    result["bytes"] = _bytes_table(pkg, result)
    result["rows"] = _report(result, rates, static)
    (out / "split.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    _plots(out, result, rates, [*static, "bandit-split", "local-bandit", "bandit"])
    missed = [r["name"] for r in result["rows"] if not r["ok"]]
    print(
        f"wrote {out / 'split.json'} and plots; {len(result['rows']) - len(missed)}/"
        f"{len(result['rows'])} targets met" + (f"; missed: {missed}" if missed else "")
    )
    return 0


def _drift(
    args: argparse.Namespace, link: Link, url: str, fast: float, slow: float, out: Path
) -> dict[str, Any]:
    """The link drops from ``fast`` to ``slow`` mid-stream: does the bandit follow?"""
    print(f"  drift: {fast:g} -> {slow:g} Mbit/s after the warm-up (bandit:ducb)", flush=True)
    link.shape(fast, args.burst)
    res = out / "device-drift.json"
    names = "bandit-split:ducb,local,split:0"  # the bandit first: it starts at the change
    cmd = [*link.exec_prefix(), *_worker_cmd(args, url, names, res), "--drift"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        if line.strip() == "CHANGE":
            link.shape(slow, args.burst)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            break
    proc.wait()
    if proc.returncode:
        raise RuntimeError("the drift run failed")
    p = json.loads(res.read_text())["policies"]
    return {
        "from_mbit": fast,
        "to_mbit": slow,
        **p["bandit-split:ducb"],
        "static_after": {k: p[k]["mean_ms"] for k in ("local", "split:0")},
    }


def _bytes_table(pkg: Path, result: dict[str, Any]) -> dict[str, Any]:
    inp = _input_bytes(pkg)
    tensors = _tensor_bytes(pkg)
    any_setting = next(iter(result["settings"].values()))["policies"]
    wire = [any_setting.get(f"split:{s}", {}).get("bytes_per_offload") for s in range(len(tensors))]
    chosen: dict[str, Any] = {}
    for rate, st in result["settings"].items():
        b = st["policies"]["bandit-split"]
        if b["offloaded"] >= 0.5:
            s = int(np.argmax(b["by_split"]))
            chosen[rate] = {"split": s, "bytes_per_offload": wire[s], "share": b["offloaded"]}
        else:
            chosen[rate] = {"split": "local", "bytes_per_offload": None, "share": b["offloaded"]}
    return {
        **inp,
        "tensor_bytes_by_split": tensors,
        "request_bytes_by_split": wire,
        "bandit_choice": chosen,
    }


def _row(name: str, value: float, target: str, ok: bool) -> dict[str, Any]:
    mark = "ok " if ok else "MISS"
    print(f"  [{mark}] {name:<66} {value:8.3f}   target {target}", flush=True)
    return {"name": name, "value": value, "target": target, "ok": ok}


def _objective(p: dict[str, Any], c: str, lam: float) -> float:
    return float(p[c]["confidence"] - lam * p[c]["mean_ms"] / p["local"]["mean_ms"])


def _report(result: dict[str, Any], rates: list[float], static: list[str]) -> list[dict[str, Any]]:
    cols = [*static, "bandit-split", "local-bandit", "bandit"]
    lam = result["lambda"]
    print("\nmean end-to-end latency (ms) per input, as the caller sees it; bytes sent per input")
    print(f"  {'Mbit/s':>7} " + "".join(f"{c:>14}" for c in cols))
    for rate in rates:
        p = result["settings"][f"{rate:g}"]["policies"]
        print(f"  {rate:>7g} " + "".join(f"{p[c]['mean_ms']:>14.3f}" for c in cols))
        print(f"  {'bytes':>7} " + "".join(f"{p[c]['bytes_per_input']:>14.0f}" for c in cols))
        print(f"  {'acc':>7} " + "".join(f"{p[c]['accuracy']:>14.4f}" for c in cols))
        print(f"  {'J':>7} " + "".join(f"{_objective(p, c, lam):>14.4f}" for c in cols))
    print(
        f"  (J = mean confidence - {lam:g} x mean latency / local-only latency: the label-free "
        "objective the bandits maximise)"
    )
    rows = []
    print()
    for rate in rates:
        p = result["settings"][f"{rate:g}"]["policies"]
        best = min(static, key=lambda c: p[c]["mean_ms"])
        b = p["bandit-split"]
        where = "local" if b["offloaded"] < 0.5 else f"split {int(np.argmax(b['by_split']))}"
        print(
            f"  {rate:g} Mbit/s: best static {best} ({p[best]['mean_ms']:.3f} ms); bandit "
            f"chose {where} for {max(b['local'], max(b['by_split']))}/{b['inputs']} inputs, "
            f"{b['bytes_per_input']:.0f} B/input; with early exits: {p['bandit']['mean_ms']:.3f} "
            f"ms at accuracy {p['bandit']['accuracy']:.4f} (local-only bandit "
            f"{p['local-bandit']['mean_ms']:.3f} ms, {p['local-bandit']['accuracy']:.4f})"
        )
        r = b["mean_ms"] / p[best]["mean_ms"]
        rows.append(
            _row(f"{rate:g} Mbit/s: bandit / best static choice ({best})", r, "<= 1.10", r <= 1.1)
        )
        for other in ("local", "split:0"):
            r2 = b["mean_ms"] / p[other]["mean_ms"]
            rows.append(_row(f"{rate:g} Mbit/s: bandit / {other}", r2, "-", True))
        r3 = p["bandit"]["mean_ms"] / p["local-bandit"]["mean_ms"]
        rows.append(
            _row(
                f"{rate:g} Mbit/s: early-exit bandit with server / local-only bandit", r3, "-", True
            )
        )
    d = result.get("drift")
    if d:
        w = d["windows"]
        print(
            f"  drift {d['from_mbit']:g} -> {d['to_mbit']:g} Mbit/s, offloaded share per 100 "
            "inputs after the change: " + " ".join(f"{x['offloaded']:.2f}" for x in w)
        )
        after = d["static_after"]
        best = min(after, key=after.__getitem__)
        tail = [x["mean_ms"] for x in w[len(w) // 2 :]]
        r = float(np.mean(tail)) / after[best]
        rows.append(
            _row(
                f"drift: bandit:ducb, 2nd half after the change / best static there ({best})",
                r,
                "<= 1.20",
                r <= 1.2,
            )
        )
    by = result["bytes"]
    print(
        f"\n  bytes: raw input {by['raw_bytes']} B, PNG {by['png_bytes']:.0f} B, zlib "
        f"{by['zlib_bytes']:.0f} B; request on the wire per split "
        + ", ".join(
            f"{s}: {b:.0f} B (tensor {t} B)"
            for s, (b, t) in enumerate(
                zip(by["request_bytes_by_split"], by["tensor_bytes_by_split"])
            )
            if b is not None
        )
    )
    for rate, c in by["bandit_choice"].items():
        if c["bytes_per_offload"] is not None:
            print(
                f"  {rate} Mbit/s: the bandit's split {c['split']} sends "
                f"{c['bytes_per_offload']:.0f} B per offload = "
                f"{c['bytes_per_offload'] / by['raw_bytes']:.2f}x the raw input, "
                f"{c['bytes_per_offload'] / by['png_bytes']:.2f}x its PNG"
            )
        else:
            print(
                f"  {rate} Mbit/s: the bandit keeps inputs on the device (offloaded "
                f"{c['share']:.0%} while exploring)"
            )
    return rows


def _plots(out: Path, result: dict[str, Any], rates: list[float], cols: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ys = [result["settings"][f"{r:g}"]["policies"][c]["mean_ms"] for r in rates]
        ax.bar(np.arange(len(rates)) + j * width, ys, width, label=c)
    ax.set_xticks(np.arange(len(rates)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{r:g} Mbit/s" for r in rates])
    ax.set_yscale("log")
    ax.set_ylabel("mean latency per input (ms, log)")
    ax.set_title(f"device {result['device_slowdown']:g}x slower than host, tc tbf")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    by = result["bytes"]
    names = ["raw input", "PNG", "zlib"] + [
        f"split {s}" for s, b in enumerate(by["request_bytes_by_split"]) if b is not None
    ]
    vals = [by["raw_bytes"], by["png_bytes"], by["zlib_bytes"]] + [
        b for b in by["request_bytes_by_split"] if b is not None
    ]
    ax.bar(names, vals, color=["0.5"] * 3 + ["C0"] * (len(vals) - 3))
    ax.set_ylabel("bytes per input (requests: on the wire, compressed)")
    ax.set_title("what an offload sends")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "split.png", dpi=110)
    plt.close(fig)
    d = result.get("drift")
    if d:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        w = d["windows"]
        ax.plot([x["start"] for x in w], [x["offloaded"] for x in w], marker="o")
        ax.set_xlabel(f"input after the link dropped {d['from_mbit']:g} -> {d['to_mbit']:g} Mbit/s")
        ax.set_ylabel("offloaded share (per 100)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)


def demo(args: argparse.Namespace, pkg: Path, out: Path) -> int:
    """Loopback, unshaped: local-only vs the bandit with a server, side by side."""
    inputs = min(args.inputs, 300)
    warm = min(args.warmup, 300)
    print(
        f"split demo: {pkg} on loopback (no shaping), device {args.device_slowdown:g}x slower "
        "than this host (emulated)",
        flush=True,
    )
    with _server(pkg, "127.0.0.1", out / "server.log") as url:
        res = out / "demo.json"
        a = argparse.Namespace(**{**vars(args), "inputs": inputs, "warmup": warm})
        cmd = _worker_cmd(a, url, "local,local-bandit,bandit-split,bandit", res)
        subprocess.run(cmd, check=True)
    p = json.loads(res.read_text())["policies"]
    labels = {
        "local": "local only, full model",
        "local-bandit": "local only, bandit (exits)",
        "bandit-split": "bandit + server (splits)",
        "bandit": "bandit + server (splits, exits)",
    }
    print(f"\n  {'policy':<32} {'mean ms':>8} {'accuracy':>9} {'B/input':>8}  where inputs went")
    for name, label in labels.items():
        s = p[name]
        where = ", ".join(
            [f"device {s['local'] / s['inputs']:.0%}"]
            + [f"split {k} {c / s['inputs']:.0%}" for k, c in enumerate(s["by_split"]) if c]
        )
        print(
            f"  {label:<32} {s['mean_ms']:>8.3f} {s['accuracy']:>9.4f} "
            f"{s['bytes_per_input']:>8.0f}  {where}"
        )
        if "best_arm" in s and name != "local-bandit":
            b = s["best_arm"]
            print(f"  {'':<32} the bandit's choice: split {b['split']}, threshold {b['threshold']}")
    b = p["bandit-split"]
    if b["bytes_per_offload"]:
        inp = _input_bytes(pkg)
        print(
            f"\n  bytes per offload {b['bytes_per_offload']:.0f} B on the wire (headers included; "
            f"raw input {inp['raw_bytes']} B, as PNG {inp['png_bytes']:.0f} B)"
        )
    return 0


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    return str(o)


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    if not any(a == "--worker" for a in sys.argv):
        print(f"benchmark took {time.time() - t0:.0f} s")
    sys.exit(code)
