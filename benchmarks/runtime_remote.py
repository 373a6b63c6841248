"""The runtime's figures on another x86 host that has Python and numpy but no edgekit.

    python -m benchmarks.runtime_remote prepare --package P [--dir build/xeon]
    # copy DIR to the host, then there, in DIR:
    python3 -m pip install --no-index --no-deps --target /tmp/site wheels/*.whl
    PYTHONPATH=/tmp/site python3 -m benchmarks.runtime_remote measure --dir .

``prepare`` puts in DIR: this benchmark, wheels (edgekit, LiteRT cp312 and its small
dependencies), the package, the Fashion-MNIST test split (uint8) and the runtime of
``--before`` (for the overhead baseline). ``measure`` prints and writes
``$OUT/remote.json`` (or DIR's): full/raw, INT8 vs float, Python overhead per predict with
stub stages before/after, the bandit's mean latency against the full model's with its
accuracy, and p99 with state saving on/off. Same code as ``benchmarks.runtime``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LITERT = ["ai-edge-litert==2.3.0", "backports.strenum", "flatbuffers", "ml_dtypes"]
LITERT += ["protobuf", "tqdm", "typing-extensions"]
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64"]


def prepare(package: Path, out: Path, before: str, python: str) -> None:
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [*pip, "download", *LITERT, "--python-version", python, *plat, "--only-binary=:all:",
         "--no-deps", "-d", str(wheels), "-q"],
        check=True,
    )  # fmt: skip
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    "."], check=True)  # fmt: skip
    shutil.copytree(package, out / "pkg.edgepkg", dirs_exist_ok=True)
    from edgekit.data import load_dataset

    d = load_dataset("fashion-mnist")
    np.savez_compressed(
        out / "test.npz",
        x=np.round(d.x_test * 255).astype(np.uint8),
        y=d.y_test.astype(np.int64),
        xf=d.x_test[:1].astype(np.float32),
    )
    blob = subprocess.run(["git", "archive", before, "runtime"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(blob.stdout)) as tar:
        tar.extractall(out, filter="data")
    shutil.rmtree(out / "_edgekit_runtime_before", ignore_errors=True)
    (out / "runtime").rename(out / "_edgekit_runtime_before")
    bench_dir = out / "benchmarks"
    bench_dir.mkdir(exist_ok=True)
    here = Path(__file__).parent
    for f in ("__init__.py", "_overhead.py", "runtime_remote.py", "runtime_profile.py"):
        shutil.copy(here / f, bench_dir / f)
    print(f"prepared {out}")


def measure(out: Path, n: int) -> dict[str, Any]:
    import edgekit
    from edgekit.evaluate import bench, cpu_info, evaluate

    from ._overhead import _per_call_us, _stubbed_before, recording_stubs, state_saving_tail

    sys.path.insert(0, str(out))
    old = __import__("_edgekit_runtime_before")
    t0 = time.time()
    d = np.load(out / "test.npz")
    x, y, xf = d["x"][:n], d["y"][:n], d["xf"]
    pkg = out / "pkg.edgepkg"
    res: dict[str, Any] = {"cpu": cpu_info()}
    print(res["cpu"], flush=True)
    for th in (1, 4):
        b = bench(pkg, x, backend="litert", threads=th, n=min(3000, n), verbose=False)
        res[f"bench_t{th}"] = b
        print(f"threads {th}: full/raw {b['overhead_full_vs_raw']:.3f}, int8 vs float "
              f"{b['int8_speedup_vs_float']:.2f}x, stages ms {b['stage_latency_ms']}")  # fmt: skip
    shape = (1, *edgekit.read_manifest(pkg, verify=False).input.shape)
    for name, inp in (("uint8", x[0]), ("float", xf[0])):
        fns, models = {}, []
        for pol in ("full", "bandit"):
            m = edgekit.load(pkg, backend="litert", policy=pol, wrap_stage=recording_stubs(shape))
            mo = _stubbed_before(old, pkg, pol, shape)
            models += [m, mo]
            fns[f"{pol}/after"] = lambda m=m, v=inp: m.predict(v)
            fns[f"{pol}/before"] = lambda mo=mo, v=inp: mo.predict(v)
        res[f"overhead_us_{name}"] = _per_call_us(fns, 7, 3000)
        for m in models:
            m.close()
        print(f"overhead us ({name} input): {res[f'overhead_us_{name}']}", flush=True)
    for pol in ("full", "bandit", "bandit:ducb"):
        with edgekit.load(pkg, backend="litert", policy=pol, threads=1) as m:
            res[pol] = evaluate(m, x, y, verbose=False, with_recording=False)
    for pol in ("bandit", "bandit:ducb"):
        ratio = res[pol]["latency_ms"]["mean"] / res["full"]["latency_ms"]["mean"]
        drop = 100 * (res["full"]["accuracy"] - res[pol]["accuracy"])
        res[f"{pol}_vs_full"] = {"latency_ratio": ratio, "accuracy_drop_points": drop}
        r = res[pol]
        print(f"{pol}: mean latency / full {ratio:.3f}, accuracy drop {drop:.2f} points, "
              f"MACs {r['mean_macs_fraction']:.3f}, exits {r['exit_histogram']}")  # fmt: skip
    res["state_saving"] = s = state_saving_tail(pkg, x)
    print(f"p99 with state saving / without: {s['on']['p99'] / s['off']['p99']:.3f}")
    res["seconds"] = time.time() - t0
    dest = Path(os.environ.get("OUT", str(out)), "remote.json")
    dest.write_text(json.dumps(res, indent=1, default=str))
    return res


def placement(out: Path, n: int, packages: list[str], chunk: int = 200) -> dict[str, Any]:
    """Bandit vs full (mean latency, accuracy) and raw stage times of each package in DIR.

    For comparing exit placements side by side: ``prepare`` once, copy more packages into
    DIR, then ``placement --packages pkg.edgepkg other.edgepkg``. Every (package, policy)
    model sees the same inputs in turns of ``chunk`` images, so a slow spell of the host
    (other tenants, clock changes) falls on all of them alike; latency is the wall time
    of ``predict`` (Python included), as an application sees it.
    """
    import edgekit
    from edgekit.evaluate import cpu_info

    from .runtime_profile import profile_package

    d = np.load(out / "test.npz")
    x, y = d["x"][:n], d["y"][:n]
    res: dict[str, Any] = {"cpu": cpu_info(), "n": len(x), "chunk": chunk}
    print(res["cpu"], flush=True)
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for name in packages:
        pkg = out / name
        res[name] = {
            "exits": [e.layer for e in edgekit.read_manifest(pkg, verify=False).exits],
            "raw": profile_package(pkg, threads=1, ops=False),
        }
        for pol in ("full", "bandit"):
            m = edgekit.load(pkg, backend="litert", policy=pol, threads=1)
            runs[name, pol] = {"m": m, "s": 0.0, "ok": 0, "exits": [0] * len(m.manifest.exits)}
    perf = time.perf_counter
    for i in range(0, len(x), chunk):
        for r in runs.values():
            predict, s, ok, hist = r["m"].predict, 0.0, 0, r["exits"]
            for v, label in zip(x[i : i + chunk], y[i : i + chunk]):
                t = perf()
                p = predict(v)
                s += perf() - t
                ok += p.label == label
                hist[p.exit] += 1
            r["s"] += s
            r["ok"] += int(ok)
    for name in packages:
        f, b = runs[name, "full"], runs[name, "bandit"]
        ratio, drop = b["s"] / f["s"], 100 * (f["ok"] - b["ok"]) / len(x)
        res[name].update(
            full_ms=1e3 * f["s"] / len(x),
            bandit_ms=1e3 * b["s"] / len(x),
            full_accuracy=f["ok"] / len(x),
            bandit_accuracy=b["ok"] / len(x),
            exit_histogram=b["exits"],
            bandit_vs_full={"latency_ratio": ratio, "accuracy_drop_points": drop},
        )
        print(f"{name} exits {res[name]['exits']}: bandit mean latency / full {ratio:.3f} "
              f"({1e3 * b['s'] / len(x):.3f} / {1e3 * f['s'] / len(x):.3f} ms), accuracy "
              f"{b['ok'] / len(x):.4f} vs full {f['ok'] / len(x):.4f} (drop {drop:.2f} "
              f"points), exits taken {b['exits']}", flush=True)  # fmt: skip
    for r in runs.values():
        r["m"].close()
    dest = Path(os.environ.get("OUT", str(out)), "placement.json")
    dest.write_text(json.dumps(res, indent=1, default=str))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prepare", "measure", "placement"))
    ap.add_argument("--dir", default="build/xeon")
    ap.add_argument("--package", default="build/fmnist.edgepkg")
    ap.add_argument("--before", default="e07f153")
    ap.add_argument("--python", default="3.12")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--packages", nargs="+", default=["pkg.edgepkg"], help="placement: in DIR")
    args = ap.parse_args(argv)
    if args.what == "prepare":
        prepare(Path(args.package), Path(args.dir), args.before, args.python)
    elif args.what == "placement":
        placement(Path(args.dir), args.n, args.packages)
    else:
        measure(Path(args.dir), args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
