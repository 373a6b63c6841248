"""Per-model running statistics: stage latencies, exits taken, latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Stats"]

_RING = 1 << 16


class Stats:
    """Filled by ``EdgeModel.predict``; ``marks`` are the perf_counter times after each stage.

    Stage latencies are kept as an exponential average; a stage not yet run is estimated
    from the first stage's latency scaled by MACs. ``record`` returns the cost of each exit
    as a fraction of the full model (by latency or by MACs), which the bandit rewards.
    """

    def __init__(self, n: int, macs_fractions: Sequence[float]) -> None:
        self.n = n
        self.marks = [0.0] * n
        self.ema = [0.0] * n
        self.hist = [0] * n
        self.count = 0
        self.cost_sum = 0.0
        self.macs = [float(m) for m in macs_fractions]
        steps = [self.macs[0]] + [b - a for a, b in zip(self.macs, self.macs[1:])]
        self._macs_ratio = [max(s, 1e-6) / max(steps[0], 1e-6) for s in steps]
        self._lat = np.zeros(_RING)
        self._costs = [0.0] * n

    def record(self, t0: float, k: int, exit_k: int, mode: str) -> list[float]:
        marks, ema = self.marks, self.ema
        prev = t0
        for i in range(k + 1):
            d = marks[i] - prev
            prev = marks[i]
            e = ema[i]
            ema[i] = d if e == 0.0 else e + 0.05 * (d - e)
        return self.record_unsplit(marks[k] - t0, exit_k, mode)

    def record_unsplit(self, seconds: float, exit_k: int, mode: str) -> list[float]:
        """Count one input; return each exit's cost from the averaged stage latencies.

        Inputs run by the unsplit model come here directly: they have no per-stage times.
        """
        self._lat[self.count % _RING] = seconds
        self.count += 1
        self.hist[exit_k] += 1
        costs, ema = self._costs, self.ema
        if mode == "macs" or ema[0] == 0.0:
            costs[:] = self.macs
        else:
            base, cum = ema[0], 0.0
            for i in range(self.n):
                cum += ema[i] if ema[i] > 0.0 else base * self._macs_ratio[i]
                costs[i] = cum
            for i in range(self.n):
                costs[i] /= cum
        self.cost_sum += costs[exit_k]
        return costs

    def summary(self) -> dict[str, Any]:
        n = min(self.count, _RING)
        lat = self._lat[:n] * 1e3
        pct = (
            {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)}
            if n
            else {"p50": None, "p95": None, "p99": None}
        )
        return {
            "predictions": self.count,
            "exit_histogram": list(self.hist),
            "latency_ms": {"mean": float(lat.mean()) if n else None, **pct},
            "mean_cost_fraction": self.cost_sum / self.count if self.count else None,
            "stage_latency_ms": [e * 1e3 for e in self.ema],
        }
