"""Confidence of an exit from its int8 logits, without leaving integer-indexed numpy.

``softmax(scale * (q - zp))`` does not depend on ``zp``: max-softmax is
``exp(scale * max(q)) / sum(exp(scale * q))``. A table of ``exp(scale * v)`` for every
8-bit value ``v`` (per exit) turns it into one ``max``, one ``sum(map(...))`` and one
division, all in C. (Python's negative indexing lets one list serve int8 values.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["MEASURES", "Confidence"]

_I8, _U8 = np.dtype(np.int8), np.dtype(np.uint8)
# int8 bytes -> value + 128: the order of int8 values, as unsigned bytes.
_FLIP = bytes(b ^ 0x80 for b in range(256))

MEASURES = ("max_softmax", "margin", "entropy")


class Confidence:
    """Per-exit confidence in [0, 1] for int8 (or uint8) logits with a given scale."""

    __slots__ = ("_i8", "_i8b", "_list", "_table", "_u8", "measure", "one", "scale")

    def __init__(self, scale: float, measure: str = "max_softmax") -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown confidence measure {measure!r}; choose from {MEASURES}")
        self.scale = float(scale)
        self.measure = measure
        # _table[255 + d] = exp(scale * d), d = q - max(q) in [-255, 0]
        self._table = np.exp(self.scale * np.arange(-255, 1, dtype=np.float64))
        self._list: list[float] = self._table.tolist()
        self.one: Callable[[np.ndarray], tuple[int, float]] = self._general
        if measure == "max_softmax" and self.scale * 255 < 700:  # exp() stays finite
            e = [math.exp(self.scale * v) for v in range(256)]
            self._u8 = e  # uint8 value v -> e[v]
            self._i8 = e[:128] + [math.exp(self.scale * (v - 256)) for v in range(128, 256)]
            self._i8b = [math.exp(self.scale * (v - 128)) for v in range(256)]  # by v + 128
            self.one = self._max_softmax

    def _max_softmax(self, q: np.ndarray) -> tuple[int, float]:
        """(argmax, max-softmax) of a single logits vector (1-D or shape (1, K))."""
        dt = q.dtype
        if dt is _I8 or dt is _U8:
            # The logits as bytes (one copy, no list of Python ints built); int8 ones
            # shifted to value + 128 so that byte order is value order.
            b = q.tobytes().translate(_FLIP) if dt is _I8 else q.tobytes()
            t = self._i8b if dt is _I8 else self._u8
            mb = max(b)
            return b.index(mb), t[mb] / sum(map(t.__getitem__, b))
        v = q.ravel().tolist()
        m = max(v)
        e = self._i8 if q.dtype.kind == "i" else self._u8
        return v.index(m), e[m] / sum(map(e.__getitem__, v))

    def reader(self, q: np.ndarray) -> Callable[[], tuple[int, float]]:
        """A function of no arguments: ``one`` of the logits in ``q`` as they are when it is
        called (``q``: one logits vector, e.g. an interpreter's output buffer read in
        place), with the dtype dispatch and the lookups done once, here."""
        if self.one != self._max_softmax or q.dtype not in (_I8, _U8):
            one = self.one
            return lambda: one(q)
        tobytes = q.tobytes  # a copy of the bytes: the buffer may change after the call
        if q.dtype == _I8:
            t, flip = self._i8b, _FLIP
            get = t.__getitem__

            def read_i8() -> tuple[int, float]:
                b = tobytes().translate(flip)
                mb = max(b)
                return b.index(mb), t[mb] / sum(map(get, b))

            return read_i8
        u = self._u8
        get = u.__getitem__

        def read_u8() -> tuple[int, float]:
            b = tobytes()
            mb = max(b)
            return b.index(mb), u[mb] / sum(map(get, b))

        return read_u8

    def _general(self, q: np.ndarray) -> tuple[int, float]:
        """(argmax, confidence) for a single logits vector (1-D or shape (1, K)).

        Plain Python over a handful of logits: about 4x faster than numpy calls here.
        """
        v = q.ravel().tolist()
        m = max(v)
        top = v.index(m)
        tbl = self._list
        e = [tbl[x - m + 255] for x in v]
        total = sum(e)
        if self.measure == "max_softmax":
            return top, 1.0 / total
        if self.measure == "margin":
            e.remove(1.0)  # the top class's term is exp(0)
            return top, (1.0 - (max(e) if e else 0.0)) / total
        ent = -sum(x / total * math.log(x / total) for x in e if x > 0.0)
        return top, 1.0 - ent / math.log(len(v))

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
