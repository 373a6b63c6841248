"""Plots for ``eval`` and ``simulate`` (matplotlib is imported only here, when asked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import require

from ._replay import Recording, ReplayResult

__all__ = ["plot_eval", "plot_regret"]


def _plt() -> Any:
    mpl = require("matplotlib", "convert", purpose="plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_eval(
    out: Path,
    sweep: Sequence[dict[str, float]],
    points: dict[str, dict[str, float]],
    histogram: Sequence[int],
) -> list[Path]:
    """accuracy_vs_cost.png (fixed thresholds, with named points) and exit_histogram.png."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = sorted(sweep, key=lambda r: r["mean_cost_fraction"])
    xs = [r["mean_cost_fraction"] for r in rows]
    ys = [100 * r["accuracy"] for r in rows]
    ax.plot(xs, ys, "-", color="0.6", label="fixed thresholds")
    markers = {"bandit": "*", "full": "s", "oracle": "D"}
    for name, p in points.items():
        ax.plot(
            p["mean_cost_fraction"],
            100 * p["accuracy"],
            markers.get(name.split(":")[0], "o"),
            ms=11 if name.startswith("bandit") else 7,
            label=name,
        )
    ax.set_xlabel("mean cost (fraction of the full model's latency)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy against cost")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [out / "accuracy_vs_cost.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(range(len(histogram)), histogram)
    ax.set_xlabel("exit")
    ax.set_ylabel("inputs")
    ax.set_title("where inputs stopped")
    fig.tight_layout()
    paths.append(out / "exit_histogram.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def rewards_per_arm(
    rec: Recording, arms: Sequence[float], lam: float, cost: str = "latency"
) -> np.ndarray:
    """(N, arms) label-free reward each fixed arm would have earned on each input."""
    costs = rec.exit_costs(cost)
    out = np.zeros((len(rec.y), len(arms)))
    idx = np.arange(len(rec.y))
    for j, a in enumerate(arms):
        hit = rec.confs[:, :-1] >= a
        e = np.where(hit.any(1), hit.argmax(1), rec.n_exits - 1)
        out[:, j] = rec.confs[idx, e] - lam * costs[e]
    return out


def regret_curve(
    rec: Recording, res: ReplayResult, lam: float, cost: str = "latency"
) -> np.ndarray:
    """Cumulative regret against the best fixed arm in hindsight (label-free reward)."""
    arms = res.extra["arms"]
    r = rewards_per_arm(rec, arms, lam, cost)
    chosen = np.asarray(res.extra["arm_history"])
    got = r[np.arange(len(chosen)), chosen]
    best = r.mean(0).argmax()
    return np.cumsum(r[:, best] - got)


def plot_regret(path: Path, curves: dict[str, np.ndarray], title: str = "regret") -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), c, label=name)
    ax.set_xlabel("inputs")
    ax.set_ylabel("cumulative regret (vs best fixed threshold)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
