"""tflite-runtime: the last standalone TFLite wheel (2.14, needs numpy<2), for old images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ._tflite_common import TFLiteFull, TFLiteStage, open_with

FORMAT = "tflite"
EXTRA = "tflite"


def available() -> bool:
    return importlib.util.find_spec("tflite_runtime") is not None


def describe() -> str:
    return "tflite-runtime (numpy<2)"


def open_stage(path: Path, threads: int | None = None) -> TFLiteStage:
    from tflite_runtime.interpreter import Interpreter

    return open_with(Interpreter, path, threads)


def open_full(path: Path, n_exits: int, threads: int | None = None) -> TFLiteFull:
    from tflite_runtime.interpreter import Interpreter

    return TFLiteFull(Interpreter(model_path=str(path), num_threads=threads), n_exits)
