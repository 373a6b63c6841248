"""Interpreter backends, one module each, imported only when used.

A backend module provides ``FORMAT`` (the artifact it runs: ``tflite`` or ``onnx``),
``EXTRA`` (the pip extra that installs it), ``available() -> bool`` (cheap: no import of
the interpreter), ``describe() -> str`` and ``open_stage(path, spec, threads)``
returning a :class:`StageRunner`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

import numpy as np

from edgekit._errors import MissingExtraError

__all__ = ["NAMES", "PREFERENCE", "StageRunner", "auto", "get"]

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


def get(name: str) -> ModuleType:
    """The backend module ``name``; :class:`MissingExtraError` if it cannot run here."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(NAMES)}")
    mod = importlib.import_module(NAMES[name])
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
        mod = importlib.import_module(NAMES[name])
        if mod.FORMAT in formats and mod.available():
            return name
        tried.append(name)
    raise MissingExtraError(
        f"no interpreter for this package's formats {formats} is installed (tried "
        f"{', '.join(tried)})",
        hint="pip install 'edgekit[litert]' (or [tflite], [onnx])",
        extra="litert",
    )
