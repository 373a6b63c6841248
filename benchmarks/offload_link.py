"""What a split costs on this host: the stages run here against a round trip to ``edgekit serve``.

    python -m benchmarks.offload_link --package build/fmnist.edgepkg [-n 200] [--out DIR]

The speed figures that tests/test_offload.py used to assume (a round trip on loopback about
1 ms, well under the stages here) are measured here instead; the test sizes its slow
device from the round trip it measures. A real server (``edgekit serve`` in this process,
no batching delay) on 127.0.0.1, one keep-alive connection, one input at a time:

- ``local_ms``: the median latency of the whole model run here, stage by stage (policy full);
- ``rtt_ms[s]``: the median round trip of an offload at split ``s`` (what the device waits
  for after its first ``s`` stages), and ``local / rtt`` at every split.

Prints the table and writes ``offload_link.json`` to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit._package import read_manifest


def measure(package: Path, n: int, seed: int = 0) -> dict[str, Any]:
    from edgekit.serve import ServeConfig, Server

    m = read_manifest(package)
    shape = tuple(d for d in m.input.shape if d > 0)
    rng = np.random.default_rng(seed)
    xs = rng.random((n, *shape), dtype=np.float32)
    warm = min(20, n)
    with edgekit.load(package, policy="full") as model:
        lat = [model.predict(x).latency_ms for x in xs]
    local = float(np.median(lat[warm:] or lat))
    rtt: dict[int, float] = {}
    with Server(package, ServeConfig(port=0, max_delay_ms=0.0)) as srv:
        for split in range(len(m.stages)):
            with edgekit.load(package, policy=f"split:{split}", offload=srv.url) as model:
                preds = [model.predict(x) for x in xs]
            if not all(p.offloaded for p in preds):
                raise RuntimeError(f"split {split}: an offload failed")
            rtt[split] = float(np.median([p.rtt_ms for p in preds[warm:] or preds]))
    return {
        "package": str(package),
        "inputs": n,
        "stages": len(m.stages),
        "local_ms": round(local, 3),
        "rtt_ms": {str(s): round(v, 3) for s, v in rtt.items()},
        "local_over_rtt": {str(s): round(local / v, 2) for s, v in rtt.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", required=True, type=Path)
    ap.add_argument("-n", type=int, default=200, help="inputs per measurement")
    ap.add_argument("--out", type=Path, help="folder for offload_link.json")
    args = ap.parse_args(argv)
    res = measure(args.package, args.n)
    print(f"{res['stages']} stages here: {res['local_ms']:.3f} ms (median of {args.n})")
    for s, v in res["rtt_ms"].items():
        ratio = res["local_over_rtt"][s]
        print(f"offload at split {s}: round trip {v:.3f} ms; local / rtt = {ratio:.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "offload_link.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
