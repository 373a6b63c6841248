"""Per-model running statistics: stage latencies, exits taken, latency percentiles, offloads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Stats"]

_RING = 1 << 16  # latencies kept for the percentiles (a power of two)
_MASK = _RING - 1
# A stage time above this multiple of its average counts as this multiple: on a busy CPU
# some inputs wait milliseconds for the scheduler, which is not the stage's cost (measured
# on a shared 2-core host: stages of 0.05-0.12 ms averaged up to 0.9 ms). A lasting
# slowdown still moves the average by 15% per input until it is within this multiple.
_SPIKE = 4.0


class Stats:
    """Filled by ``EdgeModel.predict``; ``marks`` are the perf_counter times after each stage.

    Stage latencies are kept as an exponential average (a single time far above it is
    capped, see ``_SPIKE``); a stage not yet run is estimated
    from the first stage's latency scaled by MACs. ``record`` returns the cost of each exit
    as a fraction of the full model (by latency or by MACs), which the bandit rewards.
    Offloaded inputs (``record_offload``) count at the last exit, which the server ran.
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
        self._lat = [0.0] * _RING  # a list: one store per input, no numpy call
        self._costs = [0.0] * n
        # The cost mode ``_costs`` holds as computed from today's ``ema`` (None: stale).
        # Inputs run by the unsplit model leave ``ema`` as it was, so they reuse it.
        self._fresh: str | None = None
        self._full_s = 0.0  # the full model's local latency, as estimated by the last costs
        # split computing: per split point, inputs the server answered, bytes and time
        self.offloaded = [0] * n
        self.offload_bytes = [0] * n
        self.offload_rtt_s = [0.0] * n
        self.fallbacks = 0
        self.fallback_bytes = 0

    def record(self, t0: float, k: int, exit_k: int, mode: str) -> list[float]:
        """Count an input that ran stages 0..k here (``marks`` hold their end times)."""
        marks, ema = self.marks, self.ema
        self._fresh = None
        prev = t0
        for i in range(k + 1):
            m = marks[i]
            d = m - prev
            prev = m
            e = ema[i]
            if e == 0.0:
                ema[i] = d
            else:
                ema[i] = e + 0.05 * ((d if d < _SPIKE * e else _SPIKE * e) - e)
        costs = self._count(prev - t0, exit_k, mode)
        self.cost_sum += costs[exit_k]
        return costs

    def _stages(self, t0: float, k: int, gap_at: int, gap: float) -> None:
        """Average the times of stages 0..k from ``marks``; stage ``gap_at`` started
        ``gap`` seconds late (a failed offload), which is not the stage's own time."""
        marks, ema = self.marks, self.ema
        self._fresh = None
        prev = t0
        for i in range(k + 1):
            d = marks[i] - prev
            if i == gap_at:
                d -= gap
            prev = marks[i]
            e = ema[i]
            if e == 0.0:
                ema[i] = d
            else:
                ema[i] = e + 0.05 * ((d if d < _SPIKE * e else _SPIKE * e) - e)

    def record_unsplit(self, seconds: float, exit_k: int, mode: str) -> list[float]:
        """Count one input; return each exit's cost from the averaged stage latencies.

        Inputs run by the unsplit model come here directly: they have no per-stage times.
        """
        if self._fresh == mode:  # _count's work when the costs stand (one call less)
            c = self.count
            self._lat[c & _MASK] = seconds
            self.count = c + 1
            self.hist[exit_k] += 1
            costs = self._costs
        else:
            costs = self._count(seconds, exit_k, mode)
        self.cost_sum += costs[exit_k]
        return costs

    def _count(self, seconds: float, exit_k: int, mode: str) -> list[float]:
        c = self.count
        self._lat[c & _MASK] = seconds
        self.count = c + 1
        self.hist[exit_k] += 1
        costs, ema = self._costs, self.ema
        if self._fresh == mode:
            return costs
        base = ema[0]
        if base == 0.0:
            costs[:] = self.macs
            return costs
        cum = 0.0
        ratio = self._macs_ratio
        for i in range(self.n):
            e = ema[i]
            cum += e if e > 0.0 else base * ratio[i]
            costs[i] = cum
        self._full_s = cum
        if mode == "macs":
            costs[:] = self.macs
        else:
            inv = 1.0 / cum
            for i in range(self.n):
                costs[i] *= inv
        self._fresh = mode
        return costs

    def record_offload(
        self,
        t0: float,
        ran: int,
        seconds: float,
        split: int,
        sent: int,
        rtt_s: float,
        mode: str,
    ) -> tuple[list[float], float]:
        """Count an input the server answered after ``ran`` stages here (``marks`` hold
        their times). Returns the exits' costs and what the caller paid, as a fraction of
        the full model's local latency (1.0 until that has been measured)."""
        self._stages(t0, ran - 1, -1, 0.0)
        costs = self._count(seconds, self.n - 1, mode)
        paid = seconds / self._full_s if self._full_s > 0.0 else 1.0
        self.cost_sum += paid
        self.offloaded[split] += 1
        self.offload_bytes[split] += sent
        self.offload_rtt_s[split] += rtt_s
        return costs, paid

    def record_fallback(
        self, t0: float, k: int, exit_k: int, split: int, gap: float, sent: int, mode: str
    ) -> tuple[list[float], float]:
        """Count an input the device finished at exit ``k`` after an offload at ``split``
        failed (or was not tried) and cost ``gap`` seconds between stages."""
        self._stages(t0, k, split, gap)
        seconds = self.marks[k] - t0
        costs = self._count(seconds, exit_k, mode)
        paid = seconds / self._full_s if self._full_s > 0.0 else 1.0
        self.cost_sum += paid
        self.fallbacks += 1
        self.fallback_bytes += sent
        return costs, paid

    def summary(self) -> dict[str, Any]:
        n = min(self.count, _RING)
        lat = np.array(self._lat[:n]) * 1e3
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

    def offload_summary(self) -> dict[str, Any]:
        """Offloads per split point (answered by the server), bytes and mean round trip."""
        done = sum(self.offloaded)
        sent = sum(self.offload_bytes)
        return {
            "offloaded": done,
            "offloaded_fraction": done / self.count if self.count else 0.0,
            "by_split": list(self.offloaded),
            "bytes_sent": sent + self.fallback_bytes,
            "bytes_per_offload": sent / done if done else None,
            "bytes_per_offload_by_split": [
                b / c if c else None for b, c in zip(self.offload_bytes, self.offloaded)
            ],
            "rtt_ms_by_split": [
                t * 1e3 / c if c else None for t, c in zip(self.offload_rtt_s, self.offloaded)
            ],
            "fallbacks": self.fallbacks,
        }
