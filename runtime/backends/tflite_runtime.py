"""tflite-runtime: the last standalone TFLite wheel (2.14, needs numpy<2), for old images."""

from __future__ import annotations

from typing import Any

from ._tflite_common import TFLiteBackend


def _interpreter() -> Any:
    from tflite_runtime.interpreter import Interpreter

    return Interpreter


BACKEND = TFLiteBackend(
    "tflite", "tflite_runtime", "tflite", "tflite-runtime (numpy<2)", _interpreter
)
FORMAT, EXTRA = BACKEND.FORMAT, BACKEND.EXTRA
available, describe = BACKEND.available, BACKEND.describe
open_stage, open_full = BACKEND.open_stage, BACKEND.open_full
