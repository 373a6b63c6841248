"""Run converted artifacts on the test split: chained stages and unsplit models, per format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit._package import QuantParams

__all__ = ["quantize", "run_onnx_chain", "run_onnx_full", "run_tflite_chain", "run_tflite_full"]

_CHUNK = 1000


def quantize(x: np.ndarray, q: QuantParams) -> np.ndarray:
    """Float -> 8-bit with ``q`` (round half away from zero, saturating)."""
    lo, hi = (-128, 127) if q.dtype == "int8" else (0, 255)
    return np.clip(np.round(x / q.scale) + q.zero_point, lo, hi).astype(q.dtype)


def _tflite_runner(flatbuffer: bytes) -> object:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(
        model_content=flatbuffer, num_threads=os.cpu_count() or 1
    ).get_signature_runner()


def run_tflite_chain(stages: Sequence[bytes], x_q: np.ndarray) -> list[np.ndarray]:
    """Logits (int8) of every exit when the stages run one after another on ``x_q``."""
    runners = [_tflite_runner(fb) for fb in stages]
    outs: list[list[np.ndarray]] = [[] for _ in stages]
    for i in range(0, len(x_q), _CHUNK):
        h = x_q[i : i + _CHUNK]
        for k, run in enumerate(runners):
            res = run(input=h)  # type: ignore[operator]
            outs[k].append(res["ek_logits"])
            h = res.get("ek_features")
    return [np.concatenate(o) for o in outs]


def run_tflite_full(flatbuffer: bytes, x_q: np.ndarray, n_exits: int) -> list[np.ndarray]:
    """Logits of every exit from the unsplit model (outputs ``exit_0..exit_n``)."""
    run = _tflite_runner(flatbuffer)
    outs: list[list[np.ndarray]] = [[] for _ in range(n_exits)]
    for i in range(0, len(x_q), _CHUNK):
        res = run(input=x_q[i : i + _CHUNK])  # type: ignore[operator]
        for k in range(n_exits):
            outs[k].append(res[f"exit_{k}"])
    return [np.concatenate(o) for o in outs]


def _ort_session(path: Path) -> object:
    import onnxruntime as ort

    from edgekit.runtime.backends.onnxruntime import session_options

    return ort.InferenceSession(
        str(path), session_options(os.cpu_count()), providers=["CPUExecutionProvider"]
    )


def run_onnx_chain(paths: Sequence[Path], x_q: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit from the ONNX stages run one after another (8-bit tensors)."""
    sessions = [_ort_session(p) for p in paths]
    outs: list[list[np.ndarray]] = [[] for _ in paths]
    for i in range(0, len(x_q), _CHUNK):
        h = x_q[i : i + _CHUNK]
        for k, sess in enumerate(sessions):
            last = k == len(sessions) - 1
            names = ["ek_logits"] if last else ["ek_features", "ek_logits"]
            res = sess.run(names, {"input": h})  # type: ignore[attr-defined]
            outs[k].append(res[-1])
            h = res[0]
    return [np.concatenate(o) for o in outs]


def run_onnx_full(path: Path, x_q: np.ndarray, n_exits: int) -> list[np.ndarray]:
    """Logits of every exit from the unsplit ONNX model."""
    sess = _ort_session(path)
    names = [f"exit_{k}" for k in range(n_exits)]
    outs: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(0, len(x_q), _CHUNK):
        res = sess.run(names, {"input": x_q[i : i + _CHUNK]})  # type: ignore[attr-defined]
        for k, r in enumerate(res):
            outs[k].append(r)
    return [np.concatenate(o) for o in outs]
