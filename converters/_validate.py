"""Run converted artifacts on the test split, through the runtime's own backends, so the
figures in the report come from the code path a device uses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["run_chain", "run_full"]

_CHUNK = 1000


def run_chain(backend: ModuleType, paths: Sequence[Path], x_q: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit when the stages run one after another on ``x_q`` (batched)."""
    runners = [backend.open_stage(p, os.cpu_count()) for p in paths]
    outs: list[list[np.ndarray]] = [[] for _ in paths]
    for i in range(0, len(x_q), _CHUNK):
        h = x_q[i : i + _CHUNK]
        for k, run in enumerate(runners):
            h, logits = run(h)
            outs[k].append(logits)
    return [np.concatenate(o) for o in outs]


def run_full(backend: ModuleType, path: Path, x_q: np.ndarray, n_exits: int) -> list[np.ndarray]:
    """Logits of every exit from the unsplit model (outputs ``exit_0..exit_n``)."""
    full = backend.open_full(path, n_exits, os.cpu_count())
    outs: list[list[np.ndarray]] = [[] for _ in range(n_exits)]
    for i in range(0, len(x_q), _CHUNK):
        for k, logits in enumerate(full(x_q[i : i + _CHUNK])):
            outs[k].append(logits)
    return [np.concatenate(o) for o in outs]
