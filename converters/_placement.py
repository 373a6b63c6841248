"""Exit placement by measured latency: each candidate cut's INT8 cost, timed on this host.

MACs misjudge where an INT8 model spends its time: the first layers work at full resolution
on few channels (a 3x3 conv over one input channel has a reduction of 9, too short for the
CPU's int8 dot-product units), so they cost far more per MAC than the deep ones. For every
cut point the prefix ``input -> cut`` with an exit head is converted to INT8 TFLite (PTQ on
a few calibration images: the weights do not change the time) and invoked with the real
interpreter; its time over the unsplit backbone's is the cut's latency fraction, which
``pick_cuts(cost=...)`` matches against the requested fractions instead of MACs.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._exits import attach_exits, submodel
from ._graph import MAX_EXIT_FRACTION, CutPoint
from ._quantize import to_int8_tflite

__all__ = ["PLACEMENTS", "measure_cuts", "time_tflite"]

PLACEMENTS = ("macs", "latency")
CALIBRATION_IMAGES = 32


def time_tflite(
    flatbuffers: Sequence[bytes], *, threads: int = 1, n: int = 200, rounds: int = 9
) -> list[float]:
    """Microseconds per ``set_tensor + invoke`` of each INT8 flatbuffer (batch 1).

    The models are timed in turns, ``rounds`` times each, and each keeps its fastest
    round: on a shared machine other work only ever adds time, and taking turns spreads
    it over every model alike.
    """
    from ai_edge_litert.interpreter import Interpreter

    calls: list[Callable[[], None]] = []
    keep = []
    for fb in flatbuffers:
        interp = Interpreter(model_content=fb, num_threads=threads)
        interp.allocate_tensors()
        d = interp.get_input_details()[0]
        x = np.zeros([int(s) for s in d["shape"]], dtype=d["dtype"])
        calls.append(_caller(interp.set_tensor, interp.invoke, d["index"], x))
        keep.append(interp)
        for _ in range(20):
            calls[-1]()
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            t = time.perf_counter()
            for _ in range(n):
                call()
            best[i] = min(best[i], (time.perf_counter() - t) / n * 1e6)
    return best


def _caller(set_tensor: Any, invoke: Any, index: int, x: np.ndarray) -> Callable[[], None]:
    def call() -> None:
        set_tensor(index, x)
        invoke()

    return call


def measure_cuts(
    backbone: Any,
    points: Sequence[CutPoint],
    calib: np.ndarray,
    *,
    threads: int = 1,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every candidate cut's INT8 prefix (with a head) against the whole backbone.

    Returns what the manifest and the report record: the host, the threads, the
    backbone's time and per candidate its layer, MAC fraction, time and latency fraction.
    """
    candidates = [p for p in points if p.fraction <= MAX_EXIT_FRACTION] or list(points[:1])
    rep = calib[:CALIBRATION_IMAGES].astype(np.float32)
    files = []
    for p in candidates:
        with_head = attach_exits(backbone, [p])
        prefix = submodel(
            with_head,
            None,
            [p.layer, "exit0_logits"],
            names=["ek_features", "ek_logits"],
            name=f"prefix_{p.layer}",
        )
        files.append(to_int8_tflite(prefix, rep))
    files.append(to_int8_tflite(backbone, rep))
    if say:
        say(f"timing {len(candidates)} candidate exits on this host ({threads} thread(s))")
    *cut_us, full_us = time_tflite(files, threads=threads)
    rows = [
        {
            "layer": p.layer,
            "macs_fraction": round(p.fraction, 4),
            "latency_us": round(us, 2),
            "latency_fraction": round(us / full_us, 4),
        }
        for p, us in zip(candidates, cut_us)
    ]
    return {
        "by": "latency",
        "host": f"{platform.machine()} {_cpu_name()}".strip(),
        "threads": threads,
        "backend": "litert",
        "backbone_us": round(full_us, 2),
        "candidates": rows,
    }


def latency_costs(measured: dict[str, Any]) -> dict[str, float]:
    """Cut layer -> latency fraction, for ``pick_cuts(cost=...)``."""
    return {r["layer"]: float(r["latency_fraction"]) for r in measured["candidates"]}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
