"""LiteRT (``ai_edge_litert``): Google's maintained TFLite interpreter. The default."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ._tflite_common import TFLiteFull, TFLiteStage, open_with

FORMAT = "tflite"
EXTRA = "litert"


def available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def describe() -> str:
    return "LiteRT (ai_edge_litert)"


def open_stage(path: Path, threads: int | None = None) -> TFLiteStage:
    from ai_edge_litert.interpreter import Interpreter

    return open_with(Interpreter, path, threads)


def open_full(path: Path, n_exits: int, threads: int | None = None) -> TFLiteFull:
    from ai_edge_litert.interpreter import Interpreter

    return TFLiteFull(Interpreter(model_path=str(path), num_threads=threads), n_exits)
