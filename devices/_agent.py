"""The device side of push, bench and predict: ``python -m edgekit.devices._agent CMD PKG``.

Runs inside the device's edgekit environment, so it imports only the runtime (numpy and
one interpreter) and prints one JSON document on stdout. Errors print
``{"error": ..., "hint": ...}`` and exit 2.

``place ROOT SHA256`` is the device's half of a push: the host only uploads files into
``ROOT/.incoming/`` under their sha256; the device reads the manifest with that sha256,
applies the package rule itself (it does not trust the host), and copies each file to its
place in ``ROOT/NAME/releases/RID.partial/``, refusing symlinks and paths that leave it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def _inputs(model: Any, path: str | None, n: int) -> np.ndarray:
    if path:
        xs = np.load(path, allow_pickle=False)
        return xs[:n] if n else xs
    shape = tuple(model.manifest.input.shape)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n or 8, *shape), dtype=np.uint8)


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _smoke(args: argparse.Namespace) -> dict[str, Any]:
    import edgekit.runtime as rt

    t0 = time.perf_counter()
    with rt.load(args.package, backend=args.backend, policy="full", threads=args.threads) as m:
        load_s = time.perf_counter() - t0
        shape = tuple(m.manifest.input.shape)
        probes = [np.zeros(shape, np.uint8), np.full(shape, 128, np.uint8)]
        preds = [m.predict(x) for x in probes]
        n_classes = m.manifest.stages[-1].logits.shape[-1]
        for p in preds:
            if not 0 <= p.label < n_classes or not np.isfinite(p.score):
                raise RuntimeError(f"smoke test: implausible prediction {p}")
        return {
            "ok": True,
            "backend": m.backend,
            "name": m.manifest.name,
            "exits": m.n_exits,
            "load_s": round(load_s, 3),
            "latency_ms": [round(p.latency_ms, 3) for p in preds],
            "labels": [p.label for p in preds],
            "python": platform.python_version(),
            "machine": platform.machine(),
        }


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    import edgekit.runtime as rt

    with rt.load(args.package, backend=args.backend, policy=args.policy, threads=args.threads) as m:
        xs = _inputs(m, args.input, args.n)
        preds = [m.predict(x) for x in xs]
        return {
            "backend": m.backend,
            "policy": m.policy.describe(),
            "labels": [p.label for p in preds],
            "names": [p.name for p in preds],
            "scores": [round(float(p.score), 5) for p in preds],
            "exits": [p.exit for p in preds],
            "latency_ms": [round(p.latency_ms, 3) for p in preds],
        }


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    import edgekit.runtime as rt
    from edgekit.evaluate import cpu_info, measure_stage_ms

    out: dict[str, Any] = {"python": platform.python_version(), "cpu": cpu_info()}
    with rt.load(args.package, backend=args.backend, policy="full", threads=args.threads) as m:
        xs = _inputs(m, args.input, args.n)
        out.update(backend=m.backend, threads=args.threads, inputs=len(xs), exits=m.n_exits)
        out["stage_latency_ms"] = [round(float(v), 4) for v in measure_stage_ms(m, xs, len(xs))]
        if m.backend == "onnxruntime":  # which execution provider ran each stage
            from edgekit.runtime.backends.onnxruntime import stage_providers

            out["providers"] = stage_providers()
    policies: dict[str, Any] = {}
    for spec in args.policies.split(","):
        with rt.load(args.package, backend=args.backend, policy=spec, threads=args.threads) as m:
            for x in xs[: min(20, len(xs))]:  # warm-up
                m.predict(x)
            t0 = time.perf_counter()
            preds = [m.predict(x) for x in xs]
            wall = time.perf_counter() - t0
            lat = np.array([p.latency_ms for p in preds])
            hist = np.bincount([p.exit for p in preds], minlength=m.n_exits)
            macs = [e.macs_fraction for e in m.manifest.exits]
            policies[spec] = {
                "mean_ms": round(float(lat.mean()), 4),
                "p50_ms": round(float(np.percentile(lat, 50)), 4),
                "p95_ms": round(float(np.percentile(lat, 95)), 4),
                "throughput_per_s": round(len(xs) / wall, 2),
                "exit_histogram": hist.tolist(),
                "mean_macs_fraction": round(float(np.dot(hist, macs) / len(xs)), 4),
            }
    full = policies.get("full", {}).get("mean_ms")
    for p in policies.values():
        if full:
            p["latency_vs_full"] = round(p["mean_ms"] / full, 4)
    out["policies"] = policies
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def _real_dir(parent: Path, name: str) -> Path:
    """``parent/name`` as a real folder (created if missing); a symlink there is refused."""
    path = parent / name
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a folder'}")
    return path


def _check_way(base: Path, parts: list[str]) -> None:
    """Refuse if anything that exists on the way from ``base`` through ``parts`` is a
    symlink, or a file where a folder must be (nothing is created)."""
    cur = base
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return
        what = "/".join(parts[: i + 1])
        if stat.S_ISLNK(st.st_mode):
            raise _Refused(f"{what} under {base} is a symlink; nothing was written")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise _Refused(f"{what} under {base} is not a folder; nothing was written")


class _Refused(Exception):
    """The device refuses what the host asked: the package breaks the package rule."""

    hint = "the package or the device's push folder was tampered with; convert and push again"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = f"the device refused the package: {message}"


def _copy_checked(src: Path, dest: Path, digest: str) -> None:
    """Copy ``src`` to ``dest`` (never through a symlink), checking its sha256 on the way."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise _Refused(f"{src.name} is not a regular file")
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(out, "wb") as fout:
                for block in iter(lambda: fin.read(1 << 20), b""):
                    h.update(block)
                    fout.write(block)
        if h.hexdigest() != digest:
            raise _Refused(f"{dest.name} arrived with the wrong sha256")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _place(args: argparse.Namespace) -> dict[str, Any]:
    from edgekit._errors import PackageError
    from edgekit._package import (
        MANIFEST,
        MAX_MANIFEST_BYTES,
        Manifest,
        check_package_path,
        file_sha256,
    )

    digest = args.package
    if not args.root:
        raise _Refused("place needs --root")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _Refused(f"{digest[:80]!r} is not a sha256")
    root = Path(args.root)
    incoming = root / ".incoming"
    src = incoming / digest
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if hashlib.sha256(raw).hexdigest() != digest:
        raise _Refused("the manifest arrived with the wrong sha256")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Refused("the manifest is not JSON") from None
    try:  # the package rule, applied again on the device
        manifest = Manifest.from_dict(data)
        wanted = {check_package_path(rel): d for rel, d in manifest.files.items()}
    except PackageError as exc:
        raise _Refused(f"{exc.message}; nothing was written") from None
    layers = [manifest.name, "releases", f"{digest[:12]}.partial"]
    everything = sorted([*wanted.items(), (MANIFEST, digest)])
    # First check every path as it stands, without writing anything; then write.
    for rel, _ in everything:
        _check_way(root, [*layers, *rel.split("/")])
    partial = root
    for part in layers:
        partial = _real_dir(partial, part)
    placed = 0
    for rel, d in everything:
        folder = partial
        *dirs, leaf = rel.split("/")
        for part in dirs:
            folder = _real_dir(folder, part)
        dest = folder / leaf
        if os.path.lexists(dest):
            st = os.lstat(dest)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(f"{rel} in {partial} is not a regular file")
            if file_sha256(dest) == d:
                continue
        if not os.path.lexists(incoming / d):
            raise _Refused(f"{rel} ({d[:12]}) never arrived in {incoming}")
        _copy_checked(incoming / d, dest, d)
        placed += 1
    for d in {*wanted.values(), digest}:
        (incoming / d).unlink(missing_ok=True)
    return {"ok": True, "release": str(partial), "placed": placed, "files": len(wanted) + 1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgekit.devices._agent")
    p.add_argument("command", choices=["smoke", "predict", "bench", "place"])
    p.add_argument("package", help="the package folder (place: the manifest's sha256)")
    p.add_argument("--root", help="place: the push root on the device")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policy", default="full")
    p.add_argument("--policies", default="full,threshold:0.9,bandit")
    p.add_argument("--input", help=".npy of inputs (default: random images)")
    p.add_argument("-n", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        commands = {"smoke": _smoke, "predict": _predict, "bench": _bench, "place": _place}
        out = commands[args.command](args)
    except Exception as exc:  # reported to the host as JSON, whatever it was
        err: dict[str, Any] = {
            "error": getattr(exc, "message", str(exc)),
            "type": type(exc).__name__,
        }
        if getattr(exc, "hint", None):
            err["hint"] = exc.hint  # type: ignore[attr-defined]
        print(json.dumps(err))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
