"""The TFLite interpreter API, shared by LiteRT, tflite-runtime and tensorflow.lite."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TFLiteBackend", "TFLiteFull", "TFLiteStage"]


class _Signature:
    """An interpreter addressed by tensor index through its signature, allocated for
    batch 1 and resized only when the batch size changes: per call, the work is
    set_tensor, invoke and get_tensor.

    Those three go straight to the interpreter's C++ wrapper (``Interpreter._interpreter``,
    in every TFLite flavour) when it has them: ``Interpreter.invoke`` first checks, in
    Python, that no numpy view of its buffers is alive (``_ensure_safe``), and with the
    two other wrappers that is 0.5-1 us per call. The check guards views made by
    ``Interpreter.tensor()``; nothing here makes one (``get_tensor`` copies). Holding the
    wrapper's methods makes that check fail, so they are dropped around a resize, which
    goes through the public (checked) API.
    """

    __slots__ = ("_batch", "_get", "_in", "_invoke", "_set", "input_dtype", "interpreter", "outs")

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        sig = next(iter(interpreter._get_full_signature_list().values()))
        self._in = sig["inputs"]["input"]
        self.outs: dict[str, int] = dict(sig["outputs"])
        self._batch = 1
        interpreter.resize_tensor_input(self._in, self._shape(1))
        interpreter.allocate_tensors()
        self.input_dtype = np.dtype(interpreter.get_input_details()[0]["dtype"])
        self._bind()

    def _bind(self) -> None:
        """The per-call methods: the C++ wrapper's where it has them, else the public ones."""
        it = self.interpreter
        w: Any = getattr(it, "_interpreter", None)
        if all(callable(getattr(w, f, None)) for f in ("SetTensor", "Invoke", "GetTensor")):
            self._set, self._invoke, self._get = w.SetTensor, w.Invoke, w.GetTensor
        else:  # pragma: no cover - an interpreter without the usual wrapper
            self._set, self._invoke, self._get = it.set_tensor, it.invoke, it.get_tensor

    def _unbind(self) -> None:
        self._set = self._invoke = self._get = _unbound

    def _shape(self, batch: int) -> list[int]:
        for d in self.interpreter.get_input_details():
            if d["index"] == self._in:
                return [batch, *(int(v) for v in d["shape_signature"][1:])]
        raise KeyError(self._in)

    def _resize(self, batch: int) -> None:
        self._unbind()  # let Interpreter's own safety check see no other holder
        try:
            self.interpreter.resize_tensor_input(self._in, self._shape(batch))
            self.interpreter.allocate_tensors()
            self._batch = batch
        finally:
            self._bind()

    def _invoke_on(self, x: np.ndarray) -> None:
        if x.shape[0] != self._batch:
            self._resize(x.shape[0])
        self._set(self._in, x)
        self._invoke()

    def _lend(self, indices: list[int]) -> list[np.ndarray] | None:
        """The buffers of tensors ``indices`` as numpy arrays (the interpreter's memory, at
        batch 1), or None when they move between invokes (they do not for a static graph:
        checked here on two invokes) or the interpreter has no ``tensor()``.

        While the arrays are alive the interpreter's own checked calls refuse to run (a
        resize or ``allocate_tensors`` would move the memory under them), so the holder
        drops them before anything may resize; this runner's calls are the unchecked ones.
        """
        it = self.interpreter
        if not callable(getattr(it, "tensor", None)):
            return None
        try:
            if self._batch != 1:
                self._resize(1)
            arrs = [it.tensor(i)() for i in indices]
            where = [a.ctypes.data for a in arrs]
            for _ in range(2):
                self._invoke()
                if [it.tensor(i)().ctypes.data for i in indices] != where:
                    return None
        except (ValueError, RuntimeError, TypeError):  # pragma: no cover - other versions
            return None
        return arrs

    def close(self) -> None:
        self._unbind()
        self.interpreter = None


def _unbound(*args: Any) -> Any:
    raise RuntimeError("this interpreter was closed or is being resized")


class TFLiteStage(_Signature):
    """A stage: 8-bit input -> (8-bit features, or None for the last stage; 8-bit logits)."""

    __slots__ = ("_feat", "_logits")

    def __init__(self, interpreter: Any) -> None:
        super().__init__(interpreter)
        self._feat = self.outs.get("ek_features")
        self._logits = self.outs["ek_logits"]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        # _invoke_on inlined: this runs once per stage per input.
        if x.shape[0] != self._batch:
            self._resize(x.shape[0])
        self._set(self._in, x)
        self._invoke()
        get = self._get
        return (None if self._feat is None else get(self._feat)), get(self._logits)

    def views(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, Callable[[], Any]] | None:
        """For a caller that feeds batch-1 inputs itself: (the input tensor's buffer, the
        features' buffer (None for the last stage), the logits' buffer, invoke), each array
        of the tensor's batch-1 shape. Writing the input in place, reading the logits where
        they are and copying the features straight into the next stage's input saves
        set_tensor's and get_tensor's conversions and arrays. Valid until ``close``; no
        resize may happen while they are held (see ``_lend``). None when the buffers move
        between invokes or the interpreter lends none."""
        feat = [] if self._feat is None else [self._feat]
        arrs = self._lend([self._in, self._logits, *feat])
        if arrs is None:
            return None
        return arrs[0], (arrs[2] if feat else None), arrs[1], self._invoke


class TFLiteFull(_Signature):
    """The unsplit model: one invoke returns every exit's logits (``exit_0..exit_N``)."""

    __slots__ = ("_exits", "_final")

    def __init__(self, interpreter: Any, n_exits: int) -> None:
        super().__init__(interpreter)
        self._exits = [self.outs[f"exit_{k}"] for k in range(n_exits)]
        self._final = self._exits[-1]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._invoke_on(x)
        return [self._get(i) for i in self._exits]

    def views(self) -> tuple[np.ndarray, np.ndarray, Callable[[], Any]] | None:
        """For a caller that feeds batch-1 inputs itself: (the input tensor's buffer as a
        numpy array of shape (H, W, C), the last exit's logits buffer, invoke). Writing
        the input in place and reading the logits where they are saves set_tensor's and
        get_tensor's conversions. The arrays are the interpreter's memory: valid until
        ``close``, and no resize may happen while they are held (see ``_lend``). None when
        the buffers move between invokes or the interpreter lends none."""
        arrs = self._lend([self._in, self._final])
        if arrs is None:
            return None
        return arrs[0][0], arrs[1], self._invoke

    def final(self, x: np.ndarray) -> np.ndarray:
        # _invoke_on inlined: ``policy=full`` makes this its only interpreter call.
        if x.shape[0] != self._batch:
            self._resize(x.shape[0])
        self._set(self._in, x)
        self._invoke()
        return self._get(self._final)


class TFLiteBackend:
    """A backend over one TFLite ``Interpreter`` class: ``interpreter()`` imports and
    returns it (only when a model is opened); ``module`` is what must be installed."""

    FORMAT = "tflite"

    def __init__(
        self, name: str, module: str, extra: str, text: str, interpreter: Callable[[], Any]
    ) -> None:
        self.name, self.EXTRA, self._module, self._text = name, extra, module, text
        self._interpreter = interpreter

    def available(self) -> bool:
        return importlib.util.find_spec(self._module) is not None

    def describe(self) -> str:
        return self._text

    def _open(self, path: Path, threads: int | None) -> Any:
        return self._interpreter()(model_path=str(path), num_threads=threads)

    def open_stage(self, path: Path, threads: int | None = None) -> TFLiteStage:
        return TFLiteStage(self._open(path, threads))

    def open_full(self, path: Path, n_exits: int, threads: int | None = None) -> TFLiteFull | None:
        return TFLiteFull(self._open(path, threads), n_exits)
