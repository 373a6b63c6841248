"""IoT node benchmark: end-to-end throughput (inbox file -> event acknowledged by the broker)
next to a bare ``predict`` loop on the same inputs, and the node's memory over 100,000 inputs.

    python -m benchmarks.iot_node [--package build/fmnist.edgepkg ...] [--out build/bench]
                                  [-n N] [--policy bandit|full] [-- NODE FLAGS, e.g. --batch 512]

``--package`` repeats: each package is measured in turn and a table of one row per package
(ms per input of each side, wall and CPU, and RSS) ends the output.

Runs a local Mosquitto (``/usr/sbin/mosquitto``) on a free loopback port and the node as a
subprocess (``python -m iot_node`` in apps/); its outbox tells when the broker has acknowledged
every event (events committed minus those still waiting, read every 5 ms through a read-only
SQLite connection: no work asked of the node for the measurement; polling its stats topic at
20 Hz cost it about 1 ms of CPU per stats message, some 2% of its time).
The bare loop, also a subprocess, reads the same PNG files, decodes them and calls
``predict`` (what any program that classifies files must do at least); the pure ``predict``
time on decoded arrays is printed too. The node's CPU and RSS include its publisher process
(the events' delivery). Target: the node costs at most 15% over the bare loop and its RSS
stays flat. Writes ``iot_node.json`` and ``iot_node.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = "/usr/sbin/mosquitto"
WAVE = 5000  # inputs dropped into the inbox at once
ROUNDS = 3  # timed rounds of each side, interleaved

_BARE = r"""
import json, sys, time, resource
from pathlib import Path
import io
import numpy as np
from PIL import Image
import edgekit
pkg, folder, total, policy = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
files = sorted(folder.iterdir())
model = edgekit.load(pkg, policy=policy)
shape = model.manifest.input.shape
def decode(data):
    img = Image.open(io.BytesIO(data)).convert("L" if shape[2] == 1 else "RGB")
    return np.asarray(img, dtype=np.uint8).reshape(shape)
arrays = [decode(f.read_bytes()) for f in files]
for x in arrays[:500]:
    model.predict(x)
t0 = time.perf_counter()
for x in arrays:
    model.predict(x)
t_predict = time.perf_counter() - t0
t0, c0 = time.perf_counter(), time.process_time()
for f in files:
    model.predict(decode(f.read_bytes()))
t_bare, c_bare = time.perf_counter() - t0, time.process_time() - c0
rss = []
for i in range(total):
    model.predict(decode(files[i % len(files)].read_bytes()))
    if (i + 1) % 10000 == 0:
        rss.append((i + 1, int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])))
print(json.dumps({"predict_s": t_predict, "bare_s": t_bare, "bare_cpu_s": c_bare,
                  "n": len(files), "rss_kb": rss}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The node's child processes (its publisher)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (the node and its publisher)."""
    total = 0
    for p in (pid, *_children(pid)):
        with contextlib.suppress(FileNotFoundError):
            text = Path(f"/proc/{p}/status").read_text()
            total += int(text.split("VmRSS:")[1].split()[0])
    return total


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process (all its threads) and its children."""
    return sum(_thread_cpu_s(pid))


def _thread_cpu_s(pid: int) -> tuple[float, float, float]:
    """CPU seconds of a process's main thread (the model, events, commits), of its other
    threads together (paho's network thread, the inbox's file moves), and of its child
    processes (the publisher: paho, PUBACKs, deletes)."""
    main = other = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that has just ended
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        if task.name == str(pid):
            main += cpu
        else:
            other += cpu
    kids = 0.0
    for child in _children(pid):
        with contextlib.suppress(FileNotFoundError):
            kids += _proc_cpu_s(child)
    return main, other, kids


def _images(shape: tuple[int, ...], n: int, dataset: str | None) -> list[bytes]:
    h, w, c = shape
    arrays: Any = None
    if dataset:
        try:
            import edgekit

            ds = edgekit.load_dataset(dataset)
            if ds.x_test.shape[1:] == (h, w, c):
                arrays = (ds.x_test[:n] * 255).round().astype(np.uint8)
        except Exception as exc:  # no dataset here: synthetic images still measure the node
            print(f"  (dataset {dataset} unavailable: {exc}; using synthetic images)")
    if arrays is None:
        rng = np.random.default_rng(0)
        arrays = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    out = []
    for i in range(n):  # a small test split is cycled
        a = arrays[i % len(arrays)]
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if c == 1 else a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class _Acked:
    """Reads the node's outbox: events committed (its AUTOINCREMENT counter) minus events
    still in it. A row leaves the outbox only after the broker's PUBACK, so that is the
    number of events the broker has acknowledged (one per inbox input, failed ones too)."""

    def __init__(self, path: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():  # the node creates it when it starts
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node made no outbox at {path} in {timeout:.0f} s")
            time.sleep(0.05)
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def count(self) -> int:
        """Events the broker has acknowledged so far."""
        try:
            row = self.db.execute(
                "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'outbox'),"
                " (SELECT COUNT(*) FROM outbox)"
            ).fetchone()
        except sqlite3.OperationalError:  # the node is still creating its tables
            return 0
        return int(row[0] or 0) - int(row[1])

    def wait(self, n: int, timeout: float, node: subprocess.Popen[bytes], err: Path) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if node.poll() is not None:
                tail = err.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(
                    f"the node exited with {node.returncode} after {self.count()} of {n} "
                    "events: " + " / ".join(tail)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count()} of {n} events acked in {timeout:.0f} s")
            time.sleep(0.005)

    def close(self) -> None:
        self.db.close()


def _drop(pool: Path, inbox: Path, names: list[str], tag: str) -> None:
    """Move a wave of prepared files into the inbox (renames: instant, whole files)."""
    for n in names:
        os.rename(pool / n, inbox / f"{tag}-{n}")


def run(
    package: Path,
    out: Path,
    n_total: int,
    dataset: str | None,
    node_args: list[str],
    policy: str = "bandit",
) -> dict[str, Any]:
    import edgekit

    with edgekit.load(package, policy="full") as m:
        shape = tuple(m.manifest.input.shape)
    work = Path(tempfile.mkdtemp(prefix="edgekit-iot-bench-"))
    broker = None
    node = None
    try:
        files = work / "files"
        files.mkdir()
        wave = min(WAVE, n_total)
        for i, data in enumerate(_images(shape, wave, dataset)):
            (files / f"img{i:05d}.png").write_bytes(data)
        names = sorted(p.name for p in files.iterdir())

        def bare_run(total: int) -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, "-c", _BARE, str(package), str(files), str(total), policy],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return dict(json.loads(out))

        port = _free_port()
        pdir = work / "mosquitto"
        pdir.mkdir()
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("mosquitto")
            os.chown(pdir, pw.pw_uid, pw.pw_gid)
            os.chmod(work, 0o755)
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {pdir}/\nlog_type error\n"
        )
        broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        inbox = work / "inbox"
        inbox.mkdir()
        node_err = work / "node.stderr"
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iot_node",
                "--package",
                str(package),
                "--device",
                "bench",
                "--broker",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                str(work / "state"),
                "--inbox",
                str(inbox),
                "--settle-s",
                "0",
                "--policy",
                policy,
                *node_args,
            ],
            cwd=ROOT / "apps",
            stderr=node_err.open("wb"),
        )
        counter = _Acked(work / "state" / "outbox.sqlite3")
        # warm up (model, connection) on a few inputs
        _drop(files, inbox, names[:200], "warm")
        counter.wait(200, 120, node, node_err)
        for n in names[:200]:
            os.rename(inbox / "done" / f"warm-{n}", files / n)

        # Bare loop and node in turns, ROUNDS times: the machine's load drifts, so each
        # side's best round is compared with the other's.
        node_times: list[float] = []
        node_cpu: list[float] = []
        node_threads: list[tuple[float, float, float]] = []  # main thread, others, publisher
        bares: list[dict[str, Any]] = []
        print(f"{ROUNDS} rounds of: the bare loop on {wave} files, the node on them", flush=True)
        done, k = 0, 0
        rss: list[tuple[int, int]] = []
        while done < n_total or k < ROUNDS:
            if k > 0:
                for n in names:  # recycle: done/ -> pool
                    os.rename(inbox / "done" / f"w{k - 1}-{n}", files / n)
            if k < ROUNDS:
                bares.append(bare_run(0))
            t0, c0, th0 = time.perf_counter(), _cpu_s(node.pid), _thread_cpu_s(node.pid)
            _drop(files, inbox, names, f"w{k}")
            counter.wait(200 + done + wave, 600, node, node_err)
            if k < ROUNDS:
                node_times.append(time.perf_counter() - t0)
                node_cpu.append(_cpu_s(node.pid) - c0)
                th1 = _thread_cpu_s(node.pid)
                node_threads.append((th1[0] - th0[0], th1[1] - th0[1], th1[2] - th0[2]))
                print(
                    f"  round {k + 1}: bare {wave / bares[-1]['bare_s']:.0f}/s, "
                    f"node {wave / node_times[-1]:.0f}/s",
                    flush=True,
                )
            done += wave
            k += 1
            if done % 10000 == 0 or done >= n_total:
                rss.append((done, _rss_kb(node.pid)))
                mib = rss[-1][1] / 1024
                print(
                    f"  {done:>7} inputs: node RSS (with its publisher) {mib:.1f} MiB", flush=True
                )
        for n in names:  # the last wave back into the pool, for the bare loop
            os.rename(inbox / "done" / f"w{k - 1}-{n}", files / n)
        print(f"bare loop: {n_total} inputs for memory", flush=True)
        bares.append(bare_run(n_total))
        counter.close()
    finally:
        if node is not None:
            node.send_signal(signal.SIGTERM)
            node.wait(60)
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    n = bares[0]["n"]
    node_s = min(node_times)
    bare_s = min(b["bare_s"] for b in bares)
    predict_s = min(b["predict_s"] for b in bares)
    result = {
        "package": str(package),
        "policy": policy,
        "inputs_timed": n,
        "rounds": ROUNDS,
        "node_round_s": node_times,
        "bare_round_s": [b["bare_s"] for b in bares],
        "predict_only_per_s": n / predict_s,
        "bare_loop_per_s": n / bare_s,
        "node_per_s": wave / node_s,
        "node_cost_over_bare": (node_s / wave) / (bare_s / n) - 1.0,
        # each node round against the bare round run just before it (the same load, nearly)
        "node_cost_over_bare_paired": [
            (t / wave) / (b["bare_s"] / n) - 1.0 for t, b in zip(node_times, bares, strict=False)
        ],
        "node_cost_over_predict": (node_s / wave) / (predict_s / n) - 1.0,
        # CPU time (all threads) per input: less sensitive to a loaded machine than wall time
        "node_cpu_ms_per_input": min(node_cpu) / wave * 1e3,
        # of the round with the least CPU: the main thread, its others (paho, inbox), and
        # the publisher process
        "node_cpu_ms_split": [x / wave * 1e3 for x in node_threads[node_cpu.index(min(node_cpu))]],
        "bare_cpu_ms_per_input": min(b["bare_cpu_s"] for b in bares) / n * 1e3,
        "node_rss_kb": rss,
        "bare_rss_kb": bares[-1]["rss_kb"],
    }
    bare = bares[-1]
    first, last = rss[0][1], rss[-1][1]
    result["node_rss_growth_kb"] = last - first
    result["node_rss_over_bare"] = last / bare["rss_kb"][-1][1] - 1.0 if bare["rss_kb"] else None
    return result


def _report(r: dict[str, Any], out: Path, stem: str = "iot_node") -> None:
    over = r["node_cost_over_bare"]
    print(f"\n  predict only (decoded arrays)    {r['predict_only_per_s']:9.0f} inputs/s")
    print(f"  bare loop (read, decode, predict) {r['bare_loop_per_s']:8.0f} inputs/s")
    print(f"  node (inbox -> PUBACK, end to end) {r['node_per_s']:7.0f} inputs/s")
    mark = "ok " if over <= 0.15 else "MISS"
    print(f"  [{mark}] node cost over the bare loop: {over * 100:+.1f}%   target <= +15%")
    paired = r["node_cost_over_bare_paired"]
    rounds = ", ".join(f"{x * 100:+.0f}%" for x in paired)
    med = float(np.median(paired)) * 100
    print(f"         node vs the bare round just before it: {rounds}; median {med:+.0f}%")
    print(f"         node cost over predict only: {r['node_cost_over_predict'] * 100:+.1f}%")
    nc, bc = r["node_cpu_ms_per_input"], r["bare_cpu_ms_per_input"]
    print(f"         CPU per input: node {nc:.3f} ms, bare loop {bc:.3f} ms ({nc / bc - 1:+.1%})")
    main_ms, other_ms, pub_ms = r["node_cpu_ms_split"]
    print(
        f"         node CPU per input: main thread {main_ms:.3f} ms (model, events, commits),"
        f" other threads {other_ms:.3f} ms (inbox moves, paho),"
        f" publisher process {pub_ms:.3f} ms (paho, PUBACKs, deletes)"
    )
    g = r["node_rss_growth_kb"] / 1024
    mark = "ok " if abs(g) <= 8 else "MISS"
    last = r["node_rss_kb"][-1]
    print(f"  [{mark}] node RSS after {last[0]} inputs: {last[1] / 1024:.1f} MiB ({g:+.1f} MiB)")
    if r["bare_rss_kb"]:
        b = r["bare_rss_kb"][-1]
        print(f"         bare loop RSS after {b[0]} inputs: {b[1] / 1024:.1f} MiB")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(r, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nwrote {out / f'{stem}.json'} (matplotlib missing: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("node_rss_kb", "IoT node"), ("bare_rss_kb", "bare predict loop")):
        pts = np.array(r[key], dtype=float)
        if len(pts):
            ax.plot(pts[:, 0], pts[:, 1] / 1024, marker="o", label=label)
    ax.set_xlabel("inputs")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"node {r['node_per_s']:.0f}/s vs bare {r['bare_loop_per_s']:.0f}/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    plt.close(fig)
    print(f"\nwrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")


def _table(results: list[dict[str, Any]]) -> None:
    """One row per package: per-input cost of the bare loop and of the node, and memory."""
    print(
        "\n| package | predict only ms | bare loop ms | node ms | node over bare (wall) "
        "| CPU bare ms | CPU node ms | node over bare (CPU) | node RSS MiB (first -> last) "
        "| bare RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        bare_ms = 1e3 / r["bare_loop_per_s"]
        node_ms = 1e3 / r["node_per_s"]
        nc, bc = r["node_cpu_ms_per_input"], r["bare_cpu_ms_per_input"]
        first, last = r["node_rss_kb"][0], r["node_rss_kb"][-1]
        bare_rss = f"{r['bare_rss_kb'][-1][1] / 1024:.1f}" if r["bare_rss_kb"] else "-"
        print(
            f"| {Path(r['package']).name} ({r['policy']}) "
            f"| {1e3 / r['predict_only_per_s']:.3f} | {bare_ms:.3f} "
            f"| {node_ms:.3f} | {r['node_cost_over_bare'] * 100:+.0f}% | {bc:.3f} | {nc:.3f} "
            f"| {(nc / bc - 1) * 100:+.0f}% | {first[1] / 1024:.1f} ({first[0]}) -> "
            f"{last[1] / 1024:.1f} ({last[0]}) | {bare_rss} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--package",
        action="append",
        help="package to measure (default build/fmnist.edgepkg); repeat for a row per package",
    )
    p.add_argument("--dataset", default="fashion-mnist", help="images to use (synthetic if absent)")
    p.add_argument("--out", default="build/bench")
    p.add_argument(
        "--policy",
        default="bandit",
        help="policy of both sides (bandit: what the node runs; full: no exit decisions, so "
        "the two sides run the same stages)",
    )
    p.add_argument("-n", type=int, default=100_000, help="inputs for the memory run")
    p.add_argument("node_args", nargs="*", help="flags for the node, after --: -- --batch 256")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"-n must be at least 1, not {args.n}")
    pkgs = [Path(x).resolve() for x in args.package or ["build/fmnist.edgepkg"]]  # runs in apps/
    for pkg in pkgs:
        if not (pkg / "manifest.json").is_file():
            hint = "`make demo` converts build/fmnist.edgepkg"
            print(f"no package at {pkg}: {hint}", file=sys.stderr)
            return 2
    if not os.path.exists(MOSQUITTO):
        print("mosquitto is missing: apt-get install mosquitto", file=sys.stderr)
        return 2
    results = []
    for pkg in pkgs:
        if len(pkgs) > 1:
            print(f"\n== {pkg.name}", flush=True)
        r = run(pkg, Path(args.out), args.n, args.dataset, args.node_args, args.policy)
        stem = "iot_node" if len(pkgs) == 1 else f"iot_node-{pkg.name.removesuffix('.edgepkg')}"
        _report(r, Path(args.out), stem)
        results.append(r)
    _table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
