"""Turning a user's image into the first stage's 8-bit input tensor."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
_mul, _add, _sum, _dot, _copyto = np.multiply, np.add, np.add.reduce, np.dot, np.copyto
_isfinite = math.isfinite
_U32 = np.dtype(np.uint32)
# Adding 1.5 * 2**23 to a float32 of magnitude below 2**22 rounds it to an integer (ties to
# even, as np.rint) and leaves that integer in the low bits of the sum's bit pattern:
# bits(MAGIC + v) = 0x4B400000 + rint(v). Its low byte is the 8-bit value, int8 or uint8.
_MAGIC = 12582912.0


def _scalar(v: float, dtype: Any) -> np.ndarray:
    """A 0-d array: a ufunc takes it as is, where a numpy scalar is first converted
    (measured: np.add on one 28x28 image 0.59 us with a 0-d array, 0.90 with np.uint8)."""
    return np.array(v, dtype)


class Quantizer:
    """Checks an input and quantizes it for stage 0, reusing one buffer per batch size.

    uint8 images go through a 256-entry lookup table (raw -> float -> 8-bit in one step);
    float images must already be scaled as the model expects (``raw * input.scale``).
    """

    __slots__ = (
        "_buf",
        "_buf0",
        "_buf8",
        "_fbits",
        "_fbuf",
        "_fflat",
        "_forms",
        "_hi",
        "_inv",
        "_lo",
        "_lut",
        "_magic",
        "_shift",
        "dtype",
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
        self._shift = None if self.shift is None else _scalar(int(self.shift), _U8)
        self._buf8 = self._buf0.view(_U8)  # the same bytes, as uint8
        # float inputs: x / scale, clipped to the grid (less the zero point), rounded with
        # the zero point added (_MAGIC) in one reused float buffer, whose low bytes are the
        # 8-bit values
        self._fbuf = np.empty(self.shape, np.float32)
        self._fflat = self._fbuf.reshape(-1)  # the same floats, for the finiteness check
        self._fbits = self._fbuf.view(_U32)
        self._inv = _scalar(1.0 / q.scale, np.float32)
        zp = q.zero_point
        self._lo, self._hi = _scalar(lo - zp, np.float32), _scalar(hi - zp, np.float32)
        self._magic = _scalar(_MAGIC + zp, np.float32)
        # Other shapes one image may come in: (1, H, W, C) and, for one channel, (H, W).
        h, w, c = self.shape
        self._forms = {(1, h, w, c)} | ({(h, w)} if c == 1 else set())

    def _expected(self) -> str:
        h, w, c = self.shape
        forms = [f"({h}, {w}, {c})", f"(1, {h}, {w}, {c})"] + ([f"({h}, {w})"] if c == 1 else [])
        return " or ".join(forms)

    def _image(self, x: np.ndarray) -> np.ndarray:
        """``x`` as an (H, W, C) image, or :class:`InputError` for any other shape."""
        if x.shape == self.shape:
            return x
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
        return x.reshape(self.shape)

    def one(self, x: np.ndarray) -> np.ndarray:
        """A single image -> a (1, H, W, C) 8-bit tensor (a reused buffer)."""
        x = self._image(x)
        if x.dtype is _U8:  # the common case (camera pixels), without _fill's dispatch
            if self._shift is not None:
                _add(x, self._shift, self._buf8)
            else:
                self._lut.take(x, out=self._buf0, mode="clip")
        else:
            self._fill(x, self._buf0)
        return self._buf

    def into(self, out: np.ndarray) -> Callable[[Any], None]:
        """A function that checks one image (as :meth:`one`) and writes it quantized into
        ``out``, an (H, W, C) array of this quantizer's dtype (e.g. an interpreter's own
        input buffer), with the work per image bound once."""
        if out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"out must be {self.dtype} of shape {self.shape}")
        ndarray, shape, f32 = np.ndarray, self.shape, np.dtype(np.float32)
        out8, shift, lut, fill = out.view(_U8), self._shift, self._lut, self._fill
        f, ff, fbits = self._fbuf, self._fflat, self._fbits
        inv, lo, hi, magic = self._inv, self._lo, self._hi, self._magic
        mul, add, dot, copyto, isfinite, clip = _mul, _add, _dot, _copyto, _isfinite, _clip
        image = self._image

        def write(x: Any) -> None:
            if type(x) is not ndarray or x.shape != shape:
                x = image(x if type(x) is ndarray else np.asarray(x))
            dt = x.dtype
            if dt is _U8:
                if shift is not None:
                    add(x, shift, out8)
                else:
                    lut.take(x, out=out, mode="clip")
            elif dt is f32 and clip is not None:  # _fill's float path, inlined
                mul(x, inv, f)
                if not isfinite(dot(ff, ff)):
                    _check_finite(x)
                clip(f, lo, hi, f)
                add(f, magic, f)
                copyto(out8, fbits, "unsafe")
            else:
                fill(x, out)

        return write

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
            if not _isfinite(_dot(ff, ff) if one else _sum(f, None)):
                _check_finite(x)
            # clip(v, lo - zp, hi - zp) + zp, rounded: the _MAGIC addition rounds once
            # (ties to even, as np.rint(v + zp)) and leaves the 8-bit value in each float's
            # low byte, which the uint32 -> uint8 cast keeps. Plain ufuncs: np.clip's
            # Python wrapper alone costs more than all of these.
            if _clip is not None:
                _clip(f, self._lo, self._hi, f)
            else:  # pragma: no cover - numpy without the clip ufunc
                np.maximum(f, self._lo, f)
                np.minimum(f, self._hi, f)
            _add(f, self._magic, f)
            _copyto(out.view(_U8), self._fbits if one else f.view(_U32), "unsafe")
        else:
            raise InputError(
                f"input has dtype {x.dtype}; expected uint8 pixels or float32 scaled like the "
                f"training data (pixel * {self.spec.scale:.6g})",
                expected="uint8 or float32",
                got=str(x.dtype),
            )


def _check_finite(x: np.ndarray) -> None:
    """:class:`InputError` unless every value of ``x`` is finite (after a reduction over
    it was not: a huge finite input may overflow that without being wrong)."""
    if not np.isfinite(x).all():
        raise InputError(
            "input holds NaN or infinite values",
            hint="check the camera/sensor reading or the preprocessing before predict",
        )
