"""Interpreter backends: one small module each, imported only when used, each holding a
``BACKEND`` object that implements :class:`Backend` (and the same names at module level).

The three TFLite interpreters (LiteRT, tflite-runtime, tensorflow.lite) share one
implementation, :class:`~._tflite_common.TFLiteBackend`, and differ only in where their
``Interpreter`` class comes from; the Edge TPU adds its delegate to it; onnxruntime has
its own.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit._errors import MissingExtraError

__all__ = ["NAMES", "PREFERENCE", "Backend", "FullRunner", "StageRunner", "auto", "get"]

# Name -> module. Order of PREFERENCE is what "auto" tries.
NAMES = {
    "edgetpu": "edgekit.runtime.backends.edgetpu",
    "litert": "edgekit.runtime.backends.litert",
    "tflite": "edgekit.runtime.backends.tflite_runtime",
    "tensorflow": "edgekit.runtime.backends.tensorflow",
    "onnxruntime": "edgekit.runtime.backends.onnxruntime",
}
PREFERENCE = ("edgetpu", "litert", "tflite", "tensorflow", "onnxruntime")


class StageRunner(Protocol):
    """One stage loaded in an interpreter, for one input at a time or a batch."""

    input_dtype: np.dtype

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """8-bit input -> (8-bit features or None for the last stage, 8-bit logits)."""
        ...

    def close(self) -> None: ...


class FullRunner(Protocol):
    """The unsplit model: every exit's logits from one call, or only the last one's."""

    def __call__(self, x: np.ndarray) -> list[np.ndarray]: ...

    def final(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """What the runtime needs from an interpreter."""

    name: str
    FORMAT: str  # the artifact it runs: "tflite" or "onnx"
    EXTRA: str  # the pip extra that installs it

    def available(self) -> bool:
        """Cheap: can it run here? (No import of the interpreter.)"""
        ...

    def describe(self) -> str: ...

    def open_stage(self, path: Path, threads: int | None = None) -> StageRunner: ...

    def open_full(self, path: Path, n_exits: int, threads: int | None = None) -> FullRunner | None:
        """The unsplit model, or None when this backend cannot run one."""
        ...


def _backend(name: str) -> Backend:
    backend: Backend = importlib.import_module(NAMES[name]).BACKEND
    return backend


def get(name: str) -> Backend:
    """The backend module ``name``; :class:`MissingExtraError` if it cannot run here."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(NAMES)}")
    mod = _backend(name)
    if not mod.available():
        raise MissingExtraError(
            f"backend {name!r} is not available on this machine ({mod.describe()})",
            hint=f"pip install 'edgekit[{mod.EXTRA}]'" if mod.EXTRA else mod.describe(),
            backend=name,
            extra=mod.EXTRA,
        )
    return mod


def auto(formats: tuple[str, ...]) -> str:
    """The most preferred backend that is installed and can run one of ``formats``."""
    tried = []
    for name in PREFERENCE:
        mod = _backend(name)
        if mod.FORMAT in formats and mod.available():
            return name
        tried.append(name)
    raise MissingExtraError(
        f"no interpreter for this package's formats {formats} is installed (tried "
        f"{', '.join(tried)})",
        hint="pip install 'edgekit[litert]' (or [tflite], [onnx])",
        extra="litert",
    )
