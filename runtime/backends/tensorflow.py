"""``tensorflow.lite``: the interpreter inside a full TensorFlow install (host-side)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ._tflite_common import TFLiteFull, TFLiteStage, open_with

FORMAT = "tflite"
EXTRA = "convert"


def available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def describe() -> str:
    return "tensorflow.lite (full TensorFlow)"


def open_stage(path: Path, threads: int | None = None) -> TFLiteStage:
    import tensorflow as tf

    return open_with(tf.lite.Interpreter, path, threads)


def open_full(path: Path, n_exits: int, threads: int | None = None) -> TFLiteFull:
    import tensorflow as tf

    return TFLiteFull(tf.lite.Interpreter(model_path=str(path), num_threads=threads), n_exits)
