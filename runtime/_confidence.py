"""Confidence of an exit from its int8 logits, without leaving integer-indexed numpy.

``softmax(scale * (q - zp))`` only depends on differences ``q - max(q)``, which are
integers in [-255, 0]; a table of ``exp(scale * d)`` per exit turns max-softmax into one
lookup and one sum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MEASURES", "Confidence"]

MEASURES = ("max_softmax", "margin", "entropy")


class Confidence:
    """Per-exit confidence in [0, 1] for int8 (or uint8) logits with a given scale."""

    __slots__ = ("_table", "measure", "scale")

    def __init__(self, scale: float, measure: str = "max_softmax") -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown confidence measure {measure!r}; choose from {MEASURES}")
        self.scale = float(scale)
        self.measure = measure
        # _table[255 + d] = exp(scale * d), d = q - max(q) in [-255, 0]
        self._table = np.exp(self.scale * np.arange(-255, 1, dtype=np.float64))

    def one(self, q: np.ndarray) -> tuple[int, float]:
        """(argmax, confidence) for a single logits vector (1-D or shape (1, K))."""
        v = q.reshape(-1).astype(np.int16)
        top = int(v.argmax())
        e = self._table[v - v[top] + 255]
        total = float(e.sum())
        if self.measure == "max_softmax":
            return top, 1.0 / total
        p = e / total
        if self.measure == "margin":
            second = float(np.partition(p, -2)[-2]) if p.size > 1 else 0.0
            return top, float(p[top]) - second
        ent = float(-(p * np.log(np.maximum(p, 1e-12))).sum())
        return top, 1.0 - ent / float(np.log(p.size))

    def batch(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(argmax, confidence) for logits of shape (N, K)."""
        v = q.astype(np.int16)
        top = v.argmax(axis=1)
        e = self._table[v - v.max(axis=1, keepdims=True) + 255]
        total = e.sum(axis=1)
        if self.measure == "max_softmax":
            return top, 1.0 / total
        p = e / total[:, None]
        if self.measure == "margin":
            part = np.partition(p, -2, axis=1)
            return top, part[:, -1] - part[:, -2]
        ent = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)
        return top, 1.0 - ent / np.log(p.shape[1])
