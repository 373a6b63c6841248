"""``edgekit device``, ``push``, ``run``, ``rollback`` (and ``bench PKG TARGET``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "remote_bench", "ssh_arguments"]


def ssh_arguments(p: argparse.ArgumentParser) -> None:
    """The SSH options every device command shares."""
    g = p.add_argument_group("SSH")
    g.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust and record a host key known_hosts does not have yet",
    )
    g.add_argument("--ssh-config", help="ssh config file (default: ~/.ssh/config)")
    g.add_argument("--known-hosts", help="known_hosts file (default: from ssh config or ~/.ssh)")
    g.add_argument(
        "--ask-password", action="store_true", help="prompt for a login password (never stored)"
    )
    g.add_argument("--root", default="/opt/edgekit", help="where edgekit lives on the device")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def _options(args: argparse.Namespace, **extra: Any) -> Any:
    from ._options import ConnectOptions
    from ._push import PushOptions

    password = None
    if args.ask_password:
        import getpass

        password = getpass.getpass("edgekit: SSH password: ")
    conn = ConnectOptions(
        ssh_config=args.ssh_config,
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
        password=password,
    )
    return PushOptions(root=args.root, verbose=not args.quiet, connect=conn, **extra)


def _cmd_probe(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from edgekit._errors import EdgekitError

    from ._ops import probe_device

    opts = _options(args)

    def one(t: str) -> dict[str, Any]:
        try:
            return probe_device(t, opts).to_json()
        except EdgekitError as exc:
            return {"target": t, "error": exc.message, "hint": exc.hint}

    with ThreadPoolExecutor(max_workers=min(8, len(args.targets))) as pool:
        results = dict(zip(args.targets, pool.map(one, args.targets)))  # map keeps order; 3.9
    if args.json:
        out = results[args.targets[0]] if len(args.targets) == 1 else results
        print(json.dumps(out, indent=2))
    else:
        from ._probe import DeviceInfo

        for t, r in results.items():
            if "error" in r:
                print(f"{t}: error: {r['error']}" + (f"\n  hint: {r['hint']}" if r["hint"] else ""))
                continue
            fields = {k: v for k, v in r.items() if k in DeviceInfo.__dataclass_fields__}
            info = DeviceInfo(**{**fields, "cpu_features": tuple(r["cpu_features"])})
            prof = r["profile"]
            print(f"{t}: {info.summary()}")
            print(
                f"  profile {prof['name']}: backend {prof['backend']}, "
                f"{prof['threads']} threads, {prof['format']} models"
            )
    return 0 if all("error" not in r for r in results.values()) else 1


def _cmd_push(args: argparse.Namespace) -> int:
    from ._push import push

    results = push(
        args.package,
        args.targets,
        _options(args, backend=args.backend, threads=args.threads),
        jobs=args.jobs,
    )
    if args.json:
        print(json.dumps({t: r.to_json() for t, r in results.items()}, indent=2, default=str))
    else:
        width = max(len(t) for t in results)
        for t, r in results.items():
            print(f"{t:<{width}}  {r.summary()}")
            if not r.ok and r.error is not None and r.error.hint:
                print(f"{'':<{width}}  hint: {r.error.hint}")
    return 0 if all(r.ok for r in results.values()) else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from ._ops import run_on_device

    cmd = list(args.cmd)
    if "--" in cmd:  # options written after TARGET: `edgekit run pi0 --root X -- cmd`
        cut = cmd.index("--")
        _run_options().parse_args(cmd[:cut], namespace=args)
        cmd = cmd[cut + 1 :]
    if not cmd:
        raise ValueError("nothing to run: edgekit run TARGET -- COMMAND")
    import shlex

    res = run_on_device(
        args.target,
        " ".join(shlex.quote(c) for c in cmd) if len(cmd) > 1 else cmd[0],
        package=args.package,
        options=_options(args),
        timeout=args.timeout,
    )
    if res.stderr:
        sys.stderr.write(res.stderr)
    return res.exit_code


def _run_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit run TARGET", add_help=False)
    _run_only(p)
    ssh_arguments(p)
    return p


def _run_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--package", help="package name (default: the one pushed last)")
    p.add_argument("--timeout", type=float)


def _cmd_rollback(args: argparse.Namespace) -> int:
    from ._ops import rollback

    d = rollback(args.target, args.package, args.to, _options(args))
    print(f"{args.target}: {d.package} -> {d.deploy}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ._ops import deployments

    deps = deployments(args.target, args.package, _options(args))
    if args.json:
        print(json.dumps([{**d.info, "current": d.current} for d in deps], indent=2))
        return 0
    for d in deps:
        mark = "*" if d.current else " "
        print(f"{mark} {d.deploy}  {d.info.get('backend')}  pushed {d.info.get('pushed_at')}")
    return 0


def _load_inputs(path: str) -> Any:
    import numpy as np

    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from PIL import Image

    return np.asarray(Image.open(path))[None]


def _cmd_predict(args: argparse.Namespace) -> int:
    from ._ops import predict_on_device

    truth = None
    if args.input:
        xs = _load_inputs(args.input)
    else:
        from edgekit.data import load_dataset

        ds = load_dataset(args.dataset)
        xs, truth = ds.x_test[: args.n], ds.y_test[: args.n]
    out = predict_on_device(
        args.target, xs, package=args.package, policy=args.policy, options=_options(args)
    )
    if truth is not None:
        out["accuracy"] = float(sum(int(a == b) for a, b in zip(out["labels"], truth)) / len(xs))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = zip(out["labels"], out["names"], out["scores"], out["exits"], out["latency_ms"])
    for i, (lab, name, score, ex, ms) in enumerate(rows):
        want = f"  (true: {truth[i]})" if truth is not None and truth[i] != lab else ""
        print(f"{i:5d}  {name or lab:<14} {score:.3f}  exit {ex}  {ms:7.2f} ms{want}")
    acc = f", accuracy {out['accuracy']:.1%}" if "accuracy" in out else ""
    print(f"{args.target}: {len(xs)} inputs on {out['backend']} ({out['policy']}){acc}")
    return 0


def remote_bench(args: argparse.Namespace, xs: Any) -> int:
    """``edgekit bench PKG TARGET...``: the runtime benchmark run on each device."""
    from edgekit._errors import EdgekitError

    from ._ops import bench_on_device

    backend = None if args.backend in ("auto", "litert") else args.backend  # litert: host default
    opts = _options(args, backend=backend, threads=args.threads if args.threads != 1 else None)
    results: dict[str, Any] = {}
    for t in args.targets:
        try:
            results[t] = bench_on_device(args.package, t, xs, options=opts)
        except EdgekitError as exc:
            results[t] = {"target": t, "error": exc.message, "hint": exc.hint}
    if args.json:
        print(json.dumps(results[args.targets[0]] if len(results) == 1 else results, indent=2))
    else:
        for t, r in results.items():
            if "error" in r:
                print(f"{t}: error: {r['error']}")
                continue
            print(f"{t}: {r['backend']}, {r['threads']} threads, {r['inputs']} inputs")
            stages = ", ".join(f"{v:.2f}" for v in r["stage_latency_ms"])
            print(f"  stage latency (ms): {stages}")
            if r.get("providers"):  # onnxruntime: the execution provider of each stage
                print("  providers: " + ", ".join(f"{k} {v}" for k, v in r["providers"].items()))
            for name, p in r["policies"].items():
                print(
                    f"  {name:<16} mean {p['mean_ms']:.2f} ms  p95 {p['p95_ms']:.2f} ms  "
                    f"MACs {p['mean_macs_fraction']:.2f}  x{p.get('latency_vs_full', 1):.2f}"
                )
            print(f"  peak RSS {r['peak_rss_mb']} MiB")
    return 0 if all("error" not in r for r in results.values()) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this component's commands to the ``edgekit`` parser."""
    d = sub.add_parser("device", help="probe, inspect and emulate devices")
    dsub = d.add_subparsers(dest="device_command", required=True)
    p = dsub.add_parser("probe", help="architecture, OS, Python, CPU, memory, accelerators")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="user@host[:port] or ssh alias")
    p.add_argument("--json", action="store_true")
    ssh_arguments(p)
    p.set_defaults(func=_cmd_probe)

    ls = dsub.add_parser("list", help="the versions of a package kept on the device")
    ls.add_argument("target")
    ls.add_argument("--package", help="package name (default: the one pushed last)")
    ls.add_argument("--json", action="store_true")
    ssh_arguments(ls)
    ls.set_defaults(func=_cmd_list)

    pr = dsub.add_parser("predict", help="classify images (.npy or an image file) on the device")
    pr.add_argument("target")
    pr.add_argument("input", nargs="?", help=".npy of images, or one image file")
    pr.add_argument("--dataset", default="fashion-mnist", help="without INPUT: its test images")
    pr.add_argument("-n", type=int, default=20, help="without INPUT: how many")
    pr.add_argument("--package", help="package name (default: the one pushed last)")
    pr.add_argument("--policy", default="full")
    pr.add_argument("--json", action="store_true")
    ssh_arguments(pr)
    pr.set_defaults(func=_cmd_predict)
    # `device emulate` (the virtual Raspberry Pi) registers itself here.
    from ._emulator_cli import register as register_emulate

    register_emulate(dsub)

    u = sub.add_parser(
        "push",
        help="install the runtime and a package on devices over SSH",
        description="Probe each device, install edgekit and an interpreter from a "
        "wheelhouse built here (the device needs no internet), copy the package "
        "with checksums verified on the device, smoke-test it, then switch "
        "`current`. On any failure the previous version stays current.",
    )
    u.add_argument("package")
    u.add_argument("targets", nargs="+", metavar="TARGET", help="user@host[:port] or ssh alias")
    u.add_argument("--backend", help="litert, tflite, onnxruntime, edgetpu (default: profile)")
    u.add_argument("--threads", type=int, help="interpreter threads (default: profile)")
    u.add_argument("--jobs", type=int, help="targets pushed at once (default: all, up to 8)")
    u.add_argument("--json", action="store_true")
    ssh_arguments(u)
    u.set_defaults(func=_cmd_push)

    r = sub.add_parser("run", help="run a command on a device in its current deployment")
    r.add_argument("target")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    _run_only(r)
    ssh_arguments(r)
    r.set_defaults(func=_cmd_run)

    rb = sub.add_parser("rollback", help="make the previous version current again")
    rb.add_argument("target")
    rb.add_argument("--package", help="package name (default: the one pushed last)")
    rb.add_argument("--to", help="a kept deploy id (see `edgekit device list`)")
    ssh_arguments(rb)
    rb.set_defaults(func=_cmd_rollback)
