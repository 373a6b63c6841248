"""LiteRT (``ai_edge_litert``): Google's maintained TFLite interpreter. The default."""

from __future__ import annotations

from typing import Any

from ._tflite_common import TFLiteBackend


def _interpreter() -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


BACKEND = TFLiteBackend(
    "litert", "ai_edge_litert", "litert", "LiteRT (ai_edge_litert)", _interpreter
)
FORMAT, EXTRA = BACKEND.FORMAT, BACKEND.EXTRA
available, describe = BACKEND.available, BACKEND.describe
open_stage, open_full = BACKEND.open_stage, BACKEND.open_full
