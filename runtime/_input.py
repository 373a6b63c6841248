"""Turning a user's image into the first stage's 8-bit input tensor."""

from __future__ import annotations

import math

import numpy as np

from edgekit._errors import InputError
from edgekit._package import InputSpec, QuantParams

__all__ = ["InputError", "Quantizer"]

_U8 = np.dtype(np.uint8)
# np.clip's ufunc (numpy >= 1.17): one call for both bounds; np.clip's Python wrapper
# costs more than the clipping itself on one small image.
_core = getattr(np, "_core", None) or np.core
_clip: np.ufunc | None = getattr(getattr(_core, "umath", None), "clip", None)
# The float path's calls, bound once (no module attribute lookups per input).
_mul, _add, _rint, _sum, _dot = np.multiply, np.add, np.rint, np.add.reduce, np.dot
_isfinite = math.isfinite


class Quantizer:
    """Checks an input and quantizes it for stage 0, reusing one buffer per batch size.

    uint8 images go through a 256-entry lookup table (raw -> float -> 8-bit in one step);
    float images must already be scaled as the model expects (``raw * input.scale``).
    """

    __slots__ = (
        "_buf",
        "_buf0",
        "_buf8",
        "_fbuf",
        "_fflat",
        "_forms",
        "_inv",
        "_lo",
        "_lut",
        "_zp",
        "dtype",
        "hi",
        "q",
        "shape",
        "shift",
        "spec",
    )

    def __init__(self, spec: InputSpec, q: QuantParams) -> None:
        self.spec = spec
        self.q = q
        self.shape = tuple(spec.shape)
        self.dtype = np.dtype(q.dtype)
        lo, hi = (-128, 127) if q.dtype == "int8" else (0, 255)
        real = np.arange(256, dtype=np.float64) * spec.scale + spec.offset
        self._lut = np.clip(np.round(real / q.scale) + q.zero_point, lo, hi).astype(self.dtype)
        self._buf = np.empty((1, *self.shape), self.dtype)
        self._buf0 = self._buf[0]  # the one image's view, made once
        # When the table only adds a constant to every byte (mod 256: pixel / 255 into an
        # int8 grid of step 1/255 is pixel - 128), one uint8 addition replaces the lookup
        # (np.take first converts the 784 indices to intp).
        steps = (self._lut.view(_U8).astype(np.int64) - np.arange(256)) % 256
        self.shift: np.uint8 | None = np.uint8(steps[0]) if (steps == steps[0]).all() else None
        self._buf8 = self._buf0.view(_U8)  # the same bytes, as uint8
        # float inputs: x / scale + zp, rounded and clipped, in one reused float buffer
        self._fbuf = np.empty(self.shape, np.float32)
        self._fflat = self._fbuf.reshape(-1)  # the same floats, for the finiteness check
        self._inv = np.float32(1.0 / q.scale)
        self._lo, self.hi = np.float32(lo), np.float32(hi)
        self._zp = np.float32(q.zero_point)
        # Other shapes one image may come in: (1, H, W, C) and, for one channel, (H, W).
        h, w, c = self.shape
        self._forms = {(1, h, w, c)} | ({(h, w)} if c == 1 else set())

    def _expected(self) -> str:
        h, w, c = self.shape
        forms = [f"({h}, {w}, {c})", f"(1, {h}, {w}, {c})"] + ([f"({h}, {w})"] if c == 1 else [])
        return " or ".join(forms)

    def one(self, x: np.ndarray) -> np.ndarray:
        """A single image -> a (1, H, W, C) 8-bit tensor (a reused buffer)."""
        if x.shape != self.shape:
            if x.shape not in self._forms:
                same = x.size == self._buf.size
                raise InputError(
                    f"input has shape {tuple(x.shape)}; this model expects {self._expected()}",
                    hint=(
                        "reshape it yourself if its values are the pixels in (H, W, C) order"
                        if same
                        else "resize the image to the model's input size first"
                    ),
                    expected=self.shape,
                    got=tuple(x.shape),
                )
            x = x.reshape(self.shape)
        if x.dtype is _U8:  # the common case (camera pixels), without _fill's dispatch
            if self.shift is not None:
                np.add(x, self.shift, self._buf8)
            else:
                self._lut.take(x, out=self._buf0, mode="clip")
        else:
            self._fill(x, self._buf0)
        return self._buf

    def batch(self, x: np.ndarray) -> np.ndarray:
        """Images (N, H, W, C) (or (N, H, W) for one channel) -> an (N, H, W, C) 8-bit array."""
        if x.ndim == len(self.shape) and self.shape[-1] == 1:
            x = x[..., None]
        if x.shape[1:] != self.shape:
            raise InputError(
                f"batch has shape {tuple(x.shape)}; this model expects (N, "
                f"{', '.join(map(str, self.shape))})",
                expected=self.shape,
                got=tuple(x.shape),
            )
        out = np.empty(x.shape, self.dtype)
        self._fill(x, out)
        return out

    def _fill(self, x: np.ndarray, out: np.ndarray) -> None:
        dt = x.dtype
        if dt is _U8 or dt == _U8:
            # Every uint8 value indexes the 256-entry table, so "clip" never clips; it
            # skips the bounds check of the default mode (half the cost of the lookup).
            self._lut.take(x, out=out, mode="clip")
        elif dt.kind == "f":
            one = x.shape == self.shape
            f = self._fbuf if one else np.empty(x.shape, np.float32)
            _mul(x, self._inv, f)  # positional out: no keyword parsing per call
            # One reduction catches NaN and inf (a huge finite input may overflow it: look
            # closer). One image's: its sum of squares (one BLAS call, half a sum's cost).
            ff = self._fflat
            s = _dot(ff, ff) if one else _sum(f, None)
            if not _isfinite(s) and not np.isfinite(x).all():
                raise InputError(
                    "input holds NaN or infinite values",
                    hint="check the camera/sensor reading or the preprocessing before predict",
                )
            # rint(v) + zp == rint(v + zp) (zp is an integer); then clip and cast. Plain
            # ufuncs: np.clip's Python wrapper alone costs more than all of these.
            _add(f, self._zp, f)
            if _clip is not None:
                _clip(f, self._lo, self.hi, f)
            else:  # pragma: no cover - numpy without the clip ufunc
                np.maximum(f, self._lo, f)
                np.minimum(f, self.hi, f)
            _rint(f, out=out, casting="unsafe")
        else:
            raise InputError(
                f"input has dtype {x.dtype}; expected uint8 pixels or float32 scaled like the "
                f"training data (pixel * {self.spec.scale:.6g})",
                expected="uint8 or float32",
                got=str(x.dtype),
            )
