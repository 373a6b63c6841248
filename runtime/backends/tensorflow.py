"""``tensorflow.lite``: the interpreter inside a full TensorFlow install (host-side)."""

from __future__ import annotations

from typing import Any

from ._tflite_common import TFLiteBackend


def _interpreter() -> Any:
    import tensorflow as tf

    return tf.lite.Interpreter


BACKEND = TFLiteBackend(
    "tensorflow", "tensorflow", "convert", "tensorflow.lite (full TensorFlow)", _interpreter
)
FORMAT, EXTRA = BACKEND.FORMAT, BACKEND.EXTRA
available, describe = BACKEND.available, BACKEND.describe
open_stage, open_full = BACKEND.open_stage, BACKEND.open_full
