"""Everyday device operations: probe, run, rollback, predict and bench on the device."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._progress import say

from ._connection import Connection, RunResult
from ._errors import DeviceError, PushError, RemoteCommandError
from ._options import DeviceOptions, RollbackOptions, connect
from ._probe import DeviceInfo
from ._push import PushOptions, package_release_id, probe_connection, push_one
from ._remote import Layout, q

__all__ = [
    "Deployment",
    "bench_on_device",
    "deployments",
    "predict_on_device",
    "probe_device",
    "rollback",
    "run_on_device",
]


Options = DeviceOptions | PushOptions


def _device(options: Options | None) -> DeviceOptions:
    """Any operation's options as :class:`DeviceOptions` (a :class:`PushOptions` keeps
    working where these operations took one before)."""
    if options is None:
        return RollbackOptions()
    if isinstance(options, PushOptions):
        return options.device_options()
    return options


def _smoke_timeout(opts: DeviceOptions) -> float:
    return (opts if isinstance(opts, RollbackOptions) else RollbackOptions()).smoke_timeout


def _connect(target: str, opts: DeviceOptions) -> Connection:
    return connect(target, opts.connect)


def probe_device(target: str, options: Options | None = None) -> DeviceInfo:
    """Connect and describe the device (architecture, OS, Python, accelerators...)."""
    opts = _device(options)
    with _connect(target, opts) as conn:
        return probe_connection(conn, opts.root)


@dataclass(frozen=True)
class Deployment:
    """A version of a package on a device: ``deploy`` = ``RELEASE-ENV``."""

    package: str
    deploy: str
    current: bool
    info: dict[str, Any]


def _resolve_package(conn: Connection, root: str, package: str | None) -> str:
    if package:
        return package
    out = conn.run(f"readlink {q(root)}/current || true").stdout.strip()
    if not out:
        raise DeviceError(
            f"{conn.name}: nothing has been pushed to {root} yet",
            hint=f"edgekit push PKG {conn.name}",
            target=conn.name,
        )
    return out.split("/")[0]


def deployments(
    target: str, package: str | None = None, options: Options | None = None
) -> list[Deployment]:
    """The versions kept on the device, oldest first (the history ``rollback`` walks)."""
    opts = _device(options)
    with _connect(target, opts) as conn:
        return _deployments(conn, opts.root, _resolve_package(conn, opts.root, package))


def _deployments(conn: Connection, root: str, name: str) -> list[Deployment]:
    lay = Layout(root, name)
    script = (
        f"cd {q(lay.pkg)} 2>/dev/null || exit 0; echo current=$(readlink current); "
        "for d in deploys/*; do [ -f $d/deploy.json ] && echo deploy=$(cat $d/deploy.json); "
        "done; [ -f history ] && sed 's/^/history=/' history; true"
    )
    cur, infos, hist = "", {}, []
    for line in conn.run(f"sh -c {q(script)}").stdout.splitlines():
        k, _, v = line.partition("=")
        if k == "current":
            cur = v.removeprefix("deploys/")
        elif k == "deploy":
            d = json.loads(v)
            infos[d["deploy"]] = d
        elif k == "history":
            hist.append(v)
    order = list(dict.fromkeys(h for h in hist if h in infos))
    order += [d for d in infos if d not in order]
    order.sort(key=lambda d: max((i for i, h in enumerate(hist) if h == d), default=-1))
    return [Deployment(name, d, d == cur, infos[d]) for d in order]


def rollback(
    target: str,
    package: str | None = None,
    to: str | None = None,
    options: Options | None = None,
) -> Deployment:
    """Make the previous version (or ``to``) current again, after verifying and
    smoke-testing it on the device."""
    opts = _device(options)
    with _connect(target, opts) as conn:
        name = _resolve_package(conn, opts.root, package)
        deps = _deployments(conn, opts.root, name)
        cur = next((d for d in deps if d.current), None)
        if to is not None:
            pick = next((d for d in deps if d.deploy.startswith(to)), None)
        else:
            older = [d for d in deps if not d.current and (cur is None or d.deploy != cur.deploy)]
            pick = older[-1] if older else None
        if pick is None:
            raise DeviceError(
                f"{conn.name}: no {'version ' + to if to else 'previous version'} of {name} "
                "to roll back to"
                + (f" (kept: {', '.join(d.deploy for d in deps)})" if deps else ""),
                hint="`edgekit rollback TARGET --to DEPLOY` picks one of the kept versions",
                target=conn.name,
            )
        lay = Layout(opts.root, name)
        d = f"{lay.deploys}/{pick.deploy}"
        res = conn.run(
            f"{q(d)}/env/bin/python -m edgekit.devices._agent smoke {q(d)}/package "
            f"--backend {q(pick.info.get('backend', 'auto'))} "
            f"--threads {int(pick.info.get('threads', 1))}",
            check=False,
            timeout=_smoke_timeout(opts),
        )
        if not res.ok:
            raise PushError(
                f"{conn.name}: {pick.deploy} fails its check on the device "
                f"({_agent_error(res)}); {cur.deploy if cur else 'nothing'} stays current",
                hint="push the package again",
                target=conn.name,
            )
        conn.run(f"sh -c {q(lay.switch_script(pick.deploy))}")
        if opts.verbose:
            say(f"{conn.name}: current -> {pick.deploy} (was {cur.deploy if cur else 'nothing'})")
        return Deployment(name, pick.deploy, True, pick.info)


def _agent_error(res: RunResult) -> str:
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
        return str(out.get("error", out))
    except (ValueError, IndexError):
        return (res.stderr or res.stdout).strip()[-300:] or f"exit {res.exit_code}"


def run_on_device(
    target: str,
    command: str,
    *,
    package: str | None = None,
    options: Options | None = None,
    stream: bool = True,
    timeout: float | None = None,
) -> RunResult:
    """Run ``command`` on the device inside the current deployment: ``python`` is the
    deployment's environment, ``$EDGEKIT_PACKAGE`` its package, the working directory
    the deployment folder."""
    opts = _device(options)
    with _connect(target, opts) as conn:
        name = _resolve_package(conn, opts.root, package)
        cur = Layout(opts.root, name).current
        script = (
            f"cd {q(cur)} && export PATH={q(cur)}/env/bin:$PATH "
            f"VIRTUAL_ENV={q(cur)}/env EDGEKIT_PACKAGE={q(cur)}/package && {command}"
        )

        def echo(text: str) -> None:
            print(text, end="", flush=True)

        return conn.run(
            f"sh -c {q(script)}", check=False, timeout=timeout, on_output=echo if stream else None
        )


def _agent(
    conn: Connection, root: str, name: str, args: str, xs: np.ndarray | None, timeout: float
) -> dict[str, Any]:
    cur = Layout(root, name).current
    extra = ""
    if xs is not None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(xs), allow_pickle=False)
        remote = f"{cur}/../inputs-{os.getpid()}-{time.monotonic_ns()}.npy"
        conn.put_bytes(buf.getvalue(), remote)
        extra = f" --input {q(remote)}"
    try:
        info = json.loads(conn.run(f"cat {q(cur)}/deploy.json").stdout)
        res = conn.run(
            f"{q(cur)}/env/bin/python -m edgekit.devices._agent {args} {q(cur)}/package "
            f"--backend {q(info['backend'])} --threads {int(info['threads'])}{extra}",
            check=False,
            timeout=timeout,
        )
    finally:
        if extra:
            conn.run(f"rm -f {q(remote)}", check=False)
    try:
        out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"error": (res.stderr or res.stdout).strip()[-500:] or f"exit {res.exit_code}"}
    if not res.ok or "error" in out:
        raise RemoteCommandError(
            f"{conn.name}: `{args.split()[0]}` failed on the device: {out.get('error')}",
            hint=out.get("hint") or "edgekit push the package again",
            target=conn.name,
            exit_code=res.exit_code,
            stderr=res.stderr,
        )
    out["deploy"] = info.get("deploy")
    return out


def predict_on_device(
    target: str,
    xs: np.ndarray,
    *,
    package: str | None = None,
    policy: str = "full",
    options: Options | None = None,
) -> dict[str, Any]:
    """Classify ``xs`` on the device with its current deployment (labels, exits, latency)."""
    opts = _device(options)
    with _connect(target, opts) as conn:
        name = _resolve_package(conn, opts.root, package)
        return _agent(conn, opts.root, name, f"predict --policy {q(policy)}", xs, 3600)


def bench_on_device(
    package: str | os.PathLike[str],
    target: str,
    xs: np.ndarray | None = None,
    *,
    policies: str = "full,threshold:0.9,bandit",
    options: PushOptions | None = None,
) -> dict[str, Any]:
    """Push ``package`` if the device lacks it, run the runtime benchmark there and bring
    back stage latencies, the policy comparison, memory and the device's probe."""
    push_opts = options or PushOptions()
    opts = push_opts.device_options()
    root = Path(package)
    res = push_one(root, target, push_opts)
    if not res.ok:
        assert res.error is not None
        raise res.error
    from edgekit._package import read_manifest

    name = read_manifest(root, verify=False).name
    with _connect(target, opts) as conn:
        info = probe_connection(conn, opts.root)
        out = _agent(conn, opts.root, name, f"bench --policies {q(policies)}", xs, 7200)
    out["target"] = target
    out["release"] = package_release_id(root)
    out["device"] = info.to_json()
    return out
