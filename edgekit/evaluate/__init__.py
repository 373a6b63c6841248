"""edgekit.evaluate: host tools around the runtime, not device code.

Streaming evaluation of a package against the full model and the oracle (``evaluate``),
benchmarks of its stages against raw interpreters (``bench``), offline replay of
policies over recorded per-exit confidences (``Recording``, ``replay``), and plots
(matplotlib, the ``[plots]`` extra, imported only when a plot is drawn). Used by the CLI
(``edgekit eval/simulate/bench``), the benchmarks and the device agent.
"""

from edgekit._public import publish

from ._evaluate import bench, cpu_info, evaluate, measure_stage_ms, record
from ._plots import plot_eval, plot_regret, regret_curve
from ._replay import (
    Recording,
    ReplayResult,
    fixed_threshold_sweep,
    oracle_point,
    replay,
)

__all__ = [
    "Recording",
    "ReplayResult",
    "bench",
    "cpu_info",
    "evaluate",
    "fixed_threshold_sweep",
    "measure_stage_ms",
    "oracle_point",
    "plot_eval",
    "plot_regret",
    "record",
    "regret_curve",
    "replay",
]

publish(globals())
