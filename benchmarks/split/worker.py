"""The two processes: the device (``worker``: every policy over the same inputs, in its own
namespace, pinned to CPU 0 and slowed) and the server (``edgekit serve`` on CPU 1)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .report import jsonable, summary, windows
from .slow import SlowDevice, measure_device

__all__ = ["NEVER", "ROUNDS", "SETTLE_S", "VENV_BIN", "worker"]

NEVER = math.inf
ROUNDS = 25
SETTLE_S = 0.03
VENV_BIN = Path(sys.executable).parent


# -- the device side (runs in the namespace) ------------------------------------------------


def _policy_args(name: str, lam: float) -> tuple[str, dict[str, Any], bool]:
    """(policy spec, options, uses the server) of a benchmark policy name."""
    if name == "local":
        return "full", {}, False
    if name in ("local-bandit", "local-bandit-twin"):  # the twin: the same, a second time
        return "bandit", {"lam": lam}, False
    if name == "bandit-split":  # where to split only: every arm answers with the last exit
        return "bandit", {"lam": lam, "arms": (NEVER,)}, True
    if name.startswith("bandit-split:"):
        return "bandit:" + name.split(":", 1)[1], {"lam": lam, "arms": (NEVER,)}, True
    if name == "bandit":  # (split, threshold) pairs: early exits and offload together
        return "bandit", {"lam": lam}, True
    return name, {}, True


def _traced(spec: str, opts: dict[str, Any], remote: bool) -> Any:
    """The bandit of ``spec`` (local-only or with the server), keeping each input's
    decision (split point, first threshold) in ``trace``: what the JSON's ``decisions``
    break the inputs down by. One list append per input."""
    from edgekit.runtime import BanditConfig, BanditPolicy, Decision, SplitBanditPolicy

    base = SplitBanditPolicy if remote else BanditPolicy

    class Traced(base):  # type: ignore[valid-type, misc]
        def __init__(self, config: BanditConfig) -> None:
            super().__init__(config)
            self.trace: list[tuple[int | None, float]] = []

        def select(self, ready: bool) -> Decision:
            d: Decision = super().select(ready)
            self.trace.append((d.split, d.thresholds[0]))
            return d

    algo = spec.partition(":")[2] or "ucb"
    return Traced(BanditConfig(algorithm=algo, **opts))


def _device_model(pkg: Path, name: str, url: str, lam: float, device: SlowDevice) -> Any:
    import edgekit

    spec, opts, remote = _policy_args(name, lam)
    kw: dict[str, Any] = {"offload": url, "offload_timeout_ms": 5000.0} if remote else {}
    wrap = device.wrap if device.factor > 1 else None
    policy: Any = _traced(spec, opts, remote) if spec.startswith("bandit") else spec
    # unsplit=False: every local stage timed (and slowed) alike
    return edgekit.load(
        pkg, backend="litert", policy=policy, threads=1, wrap_stage=wrap, unsplit=False, **kw
    )


def decisions(
    trace: list[tuple[int | None, float]], res: dict[str, Any], n_stages: int
) -> list[dict[str, Any]]:
    """The inputs of ``res`` by the decision the bandit took for them (``trace``, in the
    same order): split point (None: all here) and threshold, with their count, how many
    the server answered, accuracy and mean latency."""
    groups: dict[tuple[int | None, float], list[int]] = {}
    for i, d in enumerate(trace):
        groups.setdefault(d, []).append(i)
    out = []
    for (split, th), idx in sorted(groups.items(), key=lambda g: -len(g[1])):
        ix = np.array(idx)
        out.append(
            {
                "split": split,
                "threshold": th,
                "inputs": len(idx),
                "offloaded": int((res["split"][ix] >= 0).sum()),
                "accuracy": float(res["correct"][ix].mean()),
                "mean_ms": float(res["lat"][ix].mean() * 1e3),
                "exits": np.bincount(res["exits"][ix], minlength=n_stages).tolist(),
            }
        )
    return out


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
    device = measure_device(pkg, args.device_slowdown, x[order[-300:]], backend="litert")
    out: dict[str, Any] = {"stage_ms_here": list(device.stage_ms), "policies": {}}
    n_stages = len(device.stage_ms)
    names = args.policies.split(",")
    models = {n: _device_model(pkg, n, args.url, args.lam, device) for n in names}
    warm_res: dict[str, Any] = {}
    warm_trace: dict[str, Any] = {}
    warm_arms: dict[str, Any] = {}
    try:
        for name, m in models.items():
            w = warm if "bandit" in name else warm[: min(30, len(warm))]
            warm_res[name] = _stream(m, x[w], y[w])
            trace = getattr(m.policy, "trace", None)
            if trace is not None:
                warm_trace[name] = list(trace)
                trace.clear()
                warm_arms[name] = m.stats().get("arms", {}).get("places")
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
            s = summary(res, n_stages)
            s["round_means_ms"] = [float(p["lat"].mean() * 1e3) for p in parts[name]]
            if args.drift:
                s["windows"] = windows(res, 100)
            trace = getattr(m.policy, "trace", None)
            if trace is not None and not args.drift:
                # the measured inputs in the order they ran: block by block
                s["decisions"] = decisions(trace, res, n_stages)
                s["warmup_decisions"] = decisions(warm_trace[name], warm_res[name], n_stages)
                s["places_after_warmup"] = warm_arms[name]
            st = m.stats()
            if "arms" in st:
                s["best_arm"] = st["arms"]["best"]
                s["arms"] = st["arms"]["arms"]
                s["places"] = st["arms"].get("places")
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
    Path(args.result).write_text(json.dumps(out, default=jsonable))
    return 0


def worker_cmd(a: argparse.Namespace, url: str, policies: str, result: Path) -> list[str]:
    """The command line of one device process (``python -m benchmarks.split --worker``)."""
    return [*_taskset(0), sys.executable, "-m", "benchmarks.split", "--worker",
            "--package", str(a.package), "--url", url, "--policies", policies,
            "--result", str(result), "--inputs", str(a.inputs), "--warmup", str(a.warmup),
            "--device-slowdown", str(a.device_slowdown), "--lam", str(a.lam),
            "--seed", str(a.seed)]  # fmt: skip


# -- the server side (on the host) ------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _taskset(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu % (os.cpu_count() or 1))]
    return []


@contextlib.contextmanager
def server(pkg: Path, host: str, log: Path) -> Iterator[str]:
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
