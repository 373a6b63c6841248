"""Offline replay: a policy over a recorded matrix of per-exit confidences and costs.

A :class:`Recording` holds, for every input of a stream, the label and confidence of
every exit (recorded once by ``edgekit eval``) and the measured latency of every stage.
Replaying a policy over it gives exactly what the live runtime would have done, in
seconds, so bandit settings can be compared and regret curves drawn.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.runtime import NEVER, BanditPolicy, Outcome, Policy, parse_policy

__all__ = ["Recording", "ReplayResult", "fixed_threshold_sweep", "oracle_point", "replay"]


@dataclass(frozen=True)
class Recording:
    """Per-exit predictions ``labels`` and ``confs`` (N x exits), true labels ``y``
    (or -1 when unknown), per-stage latency in ms and cumulative MACs fractions."""

    labels: np.ndarray
    confs: np.ndarray
    y: np.ndarray
    stage_ms: np.ndarray
    macs: np.ndarray

    @property
    def n_exits(self) -> int:
        return int(self.labels.shape[1])

    def exit_costs(self, cost: str = "latency") -> np.ndarray:
        """Cost of each exit as a fraction of the full model."""
        if cost == "macs":
            return self.macs.astype(np.float64)
        cum = np.cumsum(self.stage_ms)
        return cum / cum[-1]

    def save(self, path: str | os.PathLike[str]) -> None:
        np.savez_compressed(
            path,
            labels=self.labels,
            confs=self.confs,
            y=self.y,
            stage_ms=self.stage_ms,
            macs=self.macs,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recording:
        with np.load(path) as z:
            return cls(z["labels"], z["confs"], z["y"], z["stage_ms"], z["macs"])

    def subset(self, idx: np.ndarray) -> Recording:
        return Recording(self.labels[idx], self.confs[idx], self.y[idx], self.stage_ms, self.macs)


@dataclass
class ReplayResult:
    """What a policy did over a recording."""

    policy: str
    exits: np.ndarray  # exit taken per input
    correct: np.ndarray  # bool per input (all False when labels are unknown)
    cost: np.ndarray  # cost fraction paid per input
    latency_ms: np.ndarray  # modelled latency per input
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())

    def summary(self, skip: int = 0) -> dict[str, Any]:
        s = slice(skip, None)
        n_exits = int(self.extra.get("n_exits", int(self.exits.max()) + 1))
        return {
            "policy": self.policy,
            "inputs": len(self.exits[s]),
            "accuracy": float(self.correct[s].mean()),
            "mean_cost_fraction": float(self.cost[s].mean()),
            "mean_latency_ms": float(self.latency_ms[s].mean()),
            "exit_histogram": np.bincount(self.exits[s], minlength=n_exits).tolist(),
        }


def _first_exit(confs: np.ndarray, th: float) -> np.ndarray:
    """Exit index per input for one global threshold (last exit when none reaches it)."""
    hit = confs[:, :-1] >= th
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), confs.shape[1] - 1)
    return first


def fixed_threshold_sweep(
    rec: Recording, thresholds: Sequence[float] | None = None, cost: str = "latency"
) -> list[dict[str, float]]:
    """Accuracy and mean cost of every fixed threshold (vectorised, whole stream)."""
    ths = (
        list(thresholds)
        if thresholds is not None
        else sorted({*np.round(np.linspace(0.3, 0.999, 140), 4).tolist(), NEVER})
    )
    costs = rec.exit_costs(cost)
    rows = []
    idx = np.arange(len(rec.y))
    for th in ths:
        e = _first_exit(rec.confs, th)
        rows.append(
            {
                "threshold": th,
                "accuracy": float((rec.labels[idx, e] == rec.y).mean()),
                "mean_cost_fraction": float(costs[e].mean()),
                "mean_latency_ms": float(np.cumsum(rec.stage_ms)[e].mean()),
            }
        )
    return rows


def oracle_point(rec: Recording, cost: str = "latency") -> dict[str, float]:
    """The iso-accuracy oracle: the earliest exit that agrees with the final exit."""
    agree = rec.labels == rec.labels[:, -1:]
    e = agree.argmax(axis=1)
    costs = rec.exit_costs(cost)
    idx = np.arange(len(rec.y))
    return {
        "accuracy": float((rec.labels[idx, e] == rec.y).mean()),
        "mean_cost_fraction": float(costs[e].mean()),
        "mean_latency_ms": float(np.cumsum(rec.stage_ms)[e].mean()),
    }


def replay(
    rec: Recording,
    policy: str | Policy,
    *,
    cost: str = "latency",
    stage_ms_schedule: Any = None,
    **policy_options: Any,
) -> ReplayResult:
    """Run ``policy`` over the recording, one input at a time, as the runtime would.

    ``stage_ms_schedule(i)`` may return per-stage latencies for input ``i`` (simulated
    load changes); otherwise the recording's are used throughout.
    """
    if isinstance(policy, str) and policy.startswith("bandit"):
        policy_options.setdefault("cost", cost)
    pol = parse_policy(policy, **policy_options) if isinstance(policy, str) else policy
    n, n_exits = rec.labels.shape
    pol.bind(n_exits, rec.macs.tolist())
    confs = rec.confs.tolist()
    exits = np.zeros(n, np.int64)
    paid = np.zeros(n)
    lat = np.zeros(n)
    base_ms = rec.stage_ms
    costs_l = rec.exit_costs(cost).tolist()
    cum_ms = np.cumsum(base_ms).tolist()
    last = n_exits - 1
    all_exits = pol.needs.all_exits
    chosen = np.zeros(n, np.int64) if isinstance(pol, BanditPolicy) else None
    start = time.perf_counter()
    for i in range(n):
        if stage_ms_schedule is not None:
            ms = np.asarray(stage_ms_schedule(i), float)
            cum = np.cumsum(ms)
            cum_ms = cum.tolist()
            costs_l = (cum / cum[-1]).tolist() if cost == "latency" else costs_l
        th = pol.select(False).thresholds
        if chosen is not None:
            chosen[i] = pol.chosen  # type: ignore[attr-defined]
        c = confs[i]
        if all_exits:
            row = rec.labels[i]
            k = int(np.argmax(row == row[-1]))
        else:
            k = 0
            while k < last and c[k] < th[k]:
                k += 1
        pol.observe(Outcome(last if all_exits else k, c, costs_l, costs_l[k], cum_ms[k]))
        exits[i] = k
        paid[i] = costs_l[k]
        lat[i] = cum_ms[k]
    seconds = time.perf_counter() - start
    idx = np.arange(n)
    correct = rec.labels[idx, exits] == rec.y
    extra: dict[str, Any] = {"n_exits": n_exits}
    if chosen is not None and n:
        extra["arm_history"] = chosen.tolist()
        extra["arms"] = [a if a != NEVER else math.inf for a in getattr(pol, "arms", ())]
    return ReplayResult(pol.describe(), exits, correct, paid, lat, seconds, extra)
