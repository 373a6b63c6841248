"""The bandit's in-place stage loop against the general one, side by side (issue 16).

    python -m benchmarks.runtime_inplace [--package build/fmnist_stem.edgepkg] [--passes 3]

A policy that decides by thresholds alone (``bandit``, ``threshold``) runs the stages on
the interpreters' own buffers (``EdgeModel._staged_run``); the general stage loop
(``wrap_stage`` given, as here with the identity) copies through set_tensor/get_tensor.

1. Python per ``predict`` with every stage's invoke made a no-op (the buffers keep the
   last real outputs, so each exit answers what it answered last): in place vs general,
   for a policy that stops at exit 0, one that runs all stages one by one, and the
   bandit; uint8 and float input. ``window`` is ``Prediction.latency_ms`` (what the
   latency ratios measure), ``predict`` the whole call (select, stats, observe too).
2. bandit mean latency / full on the test split: ``full``, the bandit in place and the
   bandit on the general loop, all three loaded, in interleaved chunks of 500 inputs (the
   order rotating) so that they see the same machine. Means of ``Prediction.latency_ms``
   (as ``benchmarks.runtime``), wall time per predict, accuracy drop, exits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.data import load_dataset


def _same(k: int, runner: Any) -> Any:
    return runner


def _noop() -> None:
    return None


def _load(pkg: Path, policy: str, where: str) -> Any:
    kw: dict[str, Any] = {"wrap_stage": _same} if where == "general" else {}
    return edgekit.load(pkg, backend="litert", policy=policy, **kw)


def python_cost(pkg: Path, x8: np.ndarray, xf: np.ndarray, rounds: int = 7) -> None:
    """Section 1: microseconds per predict with no-op invokes (median of ``rounds``)."""
    print("1. Python per predict, stage invokes made no-ops (median of 7 rounds, us)")
    cases = (("threshold:0.0", "exit 0"), ("threshold:1.0", "all stages"), ("bandit", "bandit"))
    for policy, what in cases:
        models = {}
        for where in ("in place", "general"):
            m = _load(pkg, policy, where)
            for v in x8[:50]:
                m.predict(v)  # real outputs in the buffers, a bandit past its first arms
            # A private seam, for this measurement only: the interpreters run nothing.
            for r in m._runners:
                r._invoke = _noop
            m._run = m._pick_run()  # lent again, with the no-op invokes
            assert m._lends_stages == (where == "in place")
            models[where] = m
        for kind, xs in (("uint8", x8), ("float", xf)):
            row = []
            for where, m in models.items():
                lat, wall = [], []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    s = 0.0
                    for v in xs:
                        s += m.predict(v).latency_ms
                    wall.append((time.perf_counter() - t0) / len(xs) * 1e6)
                    lat.append(s / len(xs) * 1e3)
                row.append(f"{where}: window {np.median(lat):5.2f}, predict {np.median(wall):5.2f}")
            exits = models["in place"].stats()["exit_histogram"]
            print(f"  {what:<11} {kind:<6} " + "; ".join(row) + f" (exits {exits})", flush=True)
        for m in models.values():
            m.close()


def ratios(pkg: Path, x: np.ndarray, y: np.ndarray, passes: int, kind: str) -> None:
    """Section 2: bandit / full over the test split, in place and general, interleaved."""
    clock = time.perf_counter
    for p in range(passes):
        ms = {
            "full": _load(pkg, "full", "in place"),
            "bandit": _load(pkg, "bandit", "in place"),
            "bandit-general": _load(pkg, "bandit", "general"),
        }
        names = list(ms)
        lat = dict.fromkeys(ms, 0.0)
        wall = dict.fromkeys(ms, 0.0)
        ok = dict.fromkeys(ms, 0)
        for c, i0 in enumerate(range(0, len(x), 500)):
            for k in names[c % 3 :] + names[: c % 3]:
                m = ms[k]
                t0 = clock()
                for i in range(i0, min(i0 + 500, len(x))):
                    r = m.predict(x[i])
                    lat[k] += r.latency_ms
                    ok[k] += int(r.label == y[i])
                wall[k] += clock() - t0
        n = len(x)
        line = f"  pass {p} ({kind}): full {lat['full'] / n * 1e3:.1f} us"
        for b in ("bandit", "bandit-general"):
            drop = 100 * (ok["full"] - ok[b]) / n
            line += (
                f"; {b} {lat[b] / n * 1e3:.1f} us, /full {lat[b] / lat['full']:.3f} "
                f"(wall {wall[b] / wall['full']:.3f}), drop {drop:.2f} pt, "
                f"exits {ms[b].stats()['exit_histogram']}"
            )
        print(line, flush=True)
        for m in ms.values():
            m.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="build/fmnist_stem.edgepkg")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--passes", type=int, default=3, help="interleaved passes per input kind")
    ap.add_argument("--skip-python", action="store_true", help="section 2 only")
    args = ap.parse_args(argv)
    if args.passes < 0:
        ap.error("--passes must be >= 0")
    pkg = Path(args.package)
    data = load_dataset(args.dataset)
    xf = np.asarray(data.x_test, np.float32)
    x8 = np.round(xf * 255).astype(np.uint8)
    print(f"edgekit in-place stage loop: {pkg}, LiteRT, 1 thread")
    if not args.skip_python:
        python_cost(pkg, x8[:1000], xf[:1000])
    print("2. bandit mean latency / full (Prediction.latency_ms means), interleaved")
    for kind, xs in (("float", xf), ("uint8", x8)):
        ratios(pkg, xs, data.y_test, args.passes, kind)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
