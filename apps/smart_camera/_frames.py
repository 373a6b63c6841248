"""Frame processing: to the model's input, a thumbnail for temporal caching, annotation, JPEG."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Preprocessor", "annotate", "jpeg", "thumb_diff", "thumbnail"]

THUMB = 16
DISPLAY_MIN = 240  # small frames (28x28 test images) are enlarged for the web view


class Preprocessor:
    """Centre-crop to the model's aspect ratio, resize, convert to its channels: uint8 (H, W, C).

    ``shape`` is the package's input shape ``(H, W, C)`` (``edgekit.read_manifest(pkg).input``).
    The result is raw pixels; the runtime applies the package's scale and quantization.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 3 or shape[2] not in (1, 3):
            raise ValueError(f"the package's input shape {shape} is not (H, W, 1|3)")
        self.h, self.w, self.c = (int(v) for v in shape)
        self.mode = "L" if self.c == 1 else "RGB"

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        im = Image.fromarray(frame)
        fw, fh = im.size
        if (fw, fh) != (self.w, self.h):
            target = self.w / self.h
            if abs(fw / fh - target) > 1e-3:
                if fw / fh > target:
                    cw = round(fh * target)
                    x0 = (fw - cw) // 2
                    im = im.crop((x0, 0, x0 + cw, fh))
                else:
                    ch = round(fw / target)
                    y0 = (fh - ch) // 2
                    im = im.crop((0, y0, fw, y0 + ch))
            down = im.size[0] >= self.w
            im = im.resize(
                (self.w, self.h), Image.Resampling.BOX if down else Image.Resampling.BILINEAR
            )
        if im.mode != self.mode:
            im = im.convert(self.mode)
        x = np.asarray(im)
        return x.reshape(self.h, self.w, self.c)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A 16x16 float thumbnail (block means of a subsampled green/gray channel): what
    temporal caching compares. Costs a few microseconds on any frame size."""
    g = frame if frame.ndim == 2 else frame[..., 1]
    h, w = g.shape
    s = max(1, min(h, w) // (4 * THUMB))  # subsample to about 64 pixels a side first
    g = g[::s, ::s]
    bh, bw = g.shape[0] // THUMB, g.shape[1] // THUMB
    if bh == 0 or bw == 0:  # a frame under 16 pixels a side: compare it whole
        return np.asarray(g, np.float32)
    g = g[: bh * THUMB, : bw * THUMB].astype(np.float32)
    return g.reshape(THUMB, bh, THUMB, bw).mean(axis=(1, 3))


def thumb_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, as a fraction of full scale (0..1)."""
    if a.shape != b.shape:
        return 1.0
    return float(np.abs(a - b).mean()) / 255.0


_FONT: Any = None


def _font() -> Any:
    global _FONT
    if _FONT is None:
        try:
            _FONT = ImageFont.load_default(size=14)
        except TypeError:  # Pillow < 10.1
            _FONT = ImageFont.load_default()
    return _FONT


def annotate(frame: np.ndarray, lines: list[str]) -> Image.Image:
    """The frame (enlarged if tiny) with ``lines`` of text on a dark band at the top."""
    im = Image.fromarray(frame).convert("RGB")
    if min(im.size) < DISPLAY_MIN:
        k = -(-DISPLAY_MIN // min(im.size))
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im, "RGBA")
    band = 6 + 18 * len(lines)
    draw.rectangle((0, 0, im.size[0], band), fill=(0, 0, 0, 170))
    for i, line in enumerate(lines):
        draw.text((6, 4 + 18 * i), line, fill=(255, 255, 120), font=_font())
    return im


def jpeg(im: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
