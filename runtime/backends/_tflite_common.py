"""The TFLite interpreter API, shared by LiteRT, tflite-runtime and tensorflow.lite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TFLiteStage"]


class TFLiteStage:
    """A stage in a TFLite ``Interpreter``, with tensors addressed by index.

    The interpreter is allocated for batch 1 and resized only when the batch size
    changes, so the per-call work is set_tensor, invoke and get_tensor.
    """

    __slots__ = (
        "_batch",
        "_feat",
        "_get",
        "_in",
        "_invoke",
        "_logits",
        "_set",
        "input_dtype",
        "interpreter",
    )

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        sigs = interpreter._get_full_signature_list()
        sig = next(iter(sigs.values()))
        self._in = sig["inputs"]["input"]
        self._feat = sig["outputs"].get("ek_features")
        self._logits = sig["outputs"]["ek_logits"]
        self._batch = 1
        interpreter.resize_tensor_input(self._in, self._shape(1))
        interpreter.allocate_tensors()
        self.input_dtype = np.dtype(interpreter.get_input_details()[0]["dtype"])
        self._set = interpreter.set_tensor
        self._invoke = interpreter.invoke
        self._get = interpreter.get_tensor

    def _shape(self, batch: int) -> list[int]:
        for d in self.interpreter.get_input_details():
            if d["index"] == self._in:
                return [batch, *(int(v) for v in d["shape_signature"][1:])]
        raise KeyError(self._in)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        if x.shape[0] != self._batch:
            self._batch = x.shape[0]
            self.interpreter.resize_tensor_input(self._in, self._shape(self._batch))
            self.interpreter.allocate_tensors()
        self._set(self._in, x)
        self._invoke()
        return (None if self._feat is None else self._get(self._feat)), self._get(self._logits)

    def close(self) -> None:
        self.interpreter = None


class TFLiteFull:
    """The unsplit model: one invoke returns every exit's logits (``exit_0..exit_N``)."""

    __slots__ = ("_get", "_in", "_invoke", "_outs", "_set", "interpreter")

    def __init__(self, interpreter: Any, n_exits: int) -> None:
        self.interpreter = interpreter
        sig = next(iter(interpreter._get_full_signature_list().values()))
        self._in = sig["inputs"]["input"]
        self._outs = [sig["outputs"][f"exit_{k}"] for k in range(n_exits)]
        interpreter.allocate_tensors()
        self._set, self._invoke, self._get = (
            interpreter.set_tensor,
            interpreter.invoke,
            interpreter.get_tensor,
        )

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._set(self._in, x)
        self._invoke()
        return [self._get(i) for i in self._outs]

    def final(self, x: np.ndarray) -> np.ndarray:
        self._set(self._in, x)
        self._invoke()
        return self._get(self._outs[-1])

    def close(self) -> None:
        self.interpreter = None


def open_with(interpreter_cls: Any, path: Path, threads: int | None, **kwargs: Any) -> TFLiteStage:
    return TFLiteStage(interpreter_cls(model_path=str(path), num_threads=threads, **kwargs))
