"""The command line: the arguments, the checks (package, root), and the two runs: ``bench``
(every link setting, the drift, the tables, the JSON and the plots) and ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .link import TBF, DelayProxy, Link
from .plots import write_plots
from .report import bytes_table, demo_table, jsonable, report_tables, tensor_bytes
from .slow import check_factor
from .worker import server, worker, worker_cmd

__all__ = ["bench", "demo", "main"]


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as doc  # the package's docstring: its first line describes the run

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.split", description=(doc or "").splitlines()[0]
    )
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
    try:
        check_factor(args.device_slowdown)
    except ValueError as exc:
        ap.error(f"--device-slowdown: {exc}")
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
    n_stages = len(tensor_bytes(pkg))
    static = ["local"] + [f"split:{s}" for s in range(n_stages)]
    # local-bandit-twin: a second local-only bandit, identical, on the same inputs: how far
    # two runs of one bandit differ (its choices follow measured costs, which vary)
    policies = [*static, "bandit-split", "local-bandit", "bandit", "local-bandit-twin"]
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
        with server(pkg, link.host_ip, out / "server.log") as url:
            if args.rtt_ms > 0:
                host, port = link.host_ip, int(url.rsplit(":", 1)[1])
                proxy = DelayProxy(host, (host, port), args.rtt_ms / 2e3)
                url = f"http://{host}:{proxy.port}"
            for rate in rates:
                link.shape(rate, args.burst)
                print(f"  {rate:g} Mbit/s:", flush=True)
                res = out / f"device-{rate:g}mbit.json"
                cmd = [*link.exec_prefix(), *worker_cmd(args, url, ",".join(policies), res)]
                subprocess.run(cmd, check=True)
                result["settings"][f"{rate:g}"] = json.loads(res.read_text())
            if args.drift_rates != "none":
                fast, slow = (float(v) for v in args.drift_rates.split(","))
                result["drift"] = _drift(args, link, url, fast, slow, out)
    finally:
        if proxy is not None:
            proxy.close()
        link.down()
    result["bytes"] = bytes_table(pkg, result)
    result["rows"] = report_tables(result, rates, static)
    (out / "split.json").write_text(json.dumps(result, indent=2, default=jsonable))
    write_plots(out, result, rates, [*static, "bandit-split", "local-bandit", "bandit"])
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
    cmd = [*link.exec_prefix(), *worker_cmd(args, url, names, res), "--drift"]
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


def demo(args: argparse.Namespace, pkg: Path, out: Path) -> int:
    """Loopback, unshaped: local-only vs the bandit with a server, side by side."""
    inputs = min(args.inputs, 300)
    warm = min(args.warmup, 300)
    print(
        f"split demo: {pkg} on loopback (no shaping), device {args.device_slowdown:g}x slower "
        "than this host (emulated)",
        flush=True,
    )
    with server(pkg, "127.0.0.1", out / "server.log") as url:
        res = out / "demo.json"
        a = argparse.Namespace(**{**vars(args), "inputs": inputs, "warmup": warm})
        cmd = worker_cmd(a, url, "local,local-bandit,bandit-split,bandit", res)
        subprocess.run(cmd, check=True)
    p = json.loads(res.read_text())["policies"]
    demo_table(p, pkg)
    return 0
