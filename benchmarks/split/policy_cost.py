"""What the bandits cost per input themselves: ``select`` + ``observe``, without a model.

    python -m benchmarks.split.policy_cost [--inputs 20000] [--blocks 10] [--link 3.0]

A stream of synthetic inputs (random difficulty; exit confidences grow with depth, exit
costs 0.1/0.4/0.6/1.0 of the full model) is decided and told to each policy as
``EdgeModel`` would: stop at the first exit whose confidence reaches the threshold, or
offload at the split (its cost: the stages before it plus ``--link`` times the full
model). The local-only :class:`BanditPolicy` and the :class:`SplitBanditPolicy` run the
same inputs in interleaved blocks; only their own two calls are timed. ``--link 3`` is a
link over which offloading never pays (the split bandit should then cost what the local
one does), ``--link 0.05`` one over which sending the input does.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from edgekit.runtime import BanditPolicy, Outcome, Policy, SplitBanditPolicy

COSTS = [0.1, 0.4, 0.6, 1.0]
N = len(COSTS)


def stream(n: int, seed: int) -> list[list[float]]:
    """``n`` inputs' exit confidences (a random difficulty, growing with depth)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hard = rng.random()
        out.append(
            [
                min(1.0, max(0.1, 1.0 - hard * (1.0 - 0.2 * k) + rng.gauss(0, 0.05)))
                for k in range(N)
            ]
        )
    return out


def run(pol: Policy, inputs: list[list[float]], link: float) -> tuple[float, float, int]:
    """Feed ``inputs``; (seconds in select, seconds in observe, inputs offloaded)."""
    clock = time.perf_counter
    t_sel = t_obs = 0.0
    off = 0
    for confs in inputs:
        t0 = clock()
        th, split = pol.select(True)
        t1 = clock()
        s = N if split is None else split
        k = 0
        while k < min(s, N - 1) and confs[k] < th[k]:
            k += 1
        if s < N and k == s:
            paid = (COSTS[s - 1] if s else 0.0) + link
            o = Outcome(s - 1, confs, COSTS, paid, paid, s, confs[-1])
            off += 1
        else:
            o = Outcome(k, confs, COSTS, COSTS[k], COSTS[k])
        t2 = clock()
        pol.observe(o)
        t3 = clock()
        t_sel += t1 - t0
        t_obs += t3 - t2
    return t_sel, t_obs, off


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.split.policy_cost")
    ap.add_argument("--inputs", type=int, default=20000, help="measured inputs per policy")
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--link", type=float, default=3.0, help="round trip / full local model")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--algorithm", default="ucb")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.inputs < a.blocks or a.blocks < 1 or a.warmup < 0:
        ap.error("need --inputs >= --blocks >= 1 and --warmup >= 0")
    pols: dict[str, Any] = {
        "local bandit": BanditPolicy(algorithm=a.algorithm, lam=a.lam),
        "split bandit": SplitBanditPolicy(algorithm=a.algorithm, lam=a.lam),
    }
    for p in pols.values():
        p.bind(N, COSTS)
        run(p, stream(a.warmup, a.seed + 1), a.link)
    xs = stream(a.inputs, a.seed)
    per = a.inputs // a.blocks
    sel: dict[str, list[float]] = {k: [] for k in pols}
    obs: dict[str, list[float]] = {k: [] for k in pols}
    off = dict.fromkeys(pols, 0)
    names = list(pols)
    for b in range(a.blocks):
        block = xs[b * per : (b + 1) * per]
        for name in names[b % 2 :] + names[: b % 2]:  # alternate who goes first
            ts, to, o = run(pols[name], block, a.link)
            sel[name].append(ts / per * 1e6)
            obs[name].append(to / per * 1e6)
            off[name] += o
    print(
        f"select + observe per input, us (median over {a.blocks} blocks of {per} inputs; "
        f"{a.algorithm}, lam {a.lam:g}, link {a.link:g} x the full model)"
    )
    tot = {k: [s + o for s, o in zip(sel[k], obs[k])] for k in pols}
    for name in names:
        print(
            f"  {name:<13} select {statistics.median(sel[name]):6.2f}  observe "
            f"{statistics.median(obs[name]):6.2f}  total {statistics.median(tot[name]):6.2f}  "
            f"offloaded {off[name] / (per * a.blocks):.1%}"
        )
    ratios = [s / lo for s, lo in zip(tot["split bandit"], tot["local bandit"])]
    print(
        f"  split / local per block: median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
