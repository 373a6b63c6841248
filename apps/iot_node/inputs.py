"""How the bytes of an input (an image file, an ``.npy``) become the array the model takes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .inbox import InputProblem

__all__ = ["InputProblem", "decode"]


def decode(data: bytes, shape: tuple[int, ...], max_pixels: int) -> np.ndarray:
    """Image bytes (PNG, JPEG, ... anything Pillow reads) or an ``.npy`` -> an array the
    model accepts: images are converted to the model's channels and resized to its size."""
    if data[:6] == b"\x93NUMPY":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise InputProblem(f"not a readable .npy: {exc}") from exc
        if arr.dtype.kind not in "uif" or arr.size != int(np.prod(shape)):
            raise InputProblem(
                f".npy holds {arr.dtype} {tuple(arr.shape)}; the model takes {tuple(shape)} "
                "numbers (uint8 pixels, or floats scaled like the training data)"
            )
        return arr.astype(np.float32) if arr.dtype.kind != "u" else arr.astype(np.uint8)
    h, w, c = shape
    try:
        src = Image.open(io.BytesIO(data))  # reads the header only: size before pixels
        if src.width * src.height > max_pixels:
            raise InputProblem(
                f"image is {src.width}x{src.height}, over the {max_pixels}-pixel limit"
            )
        img = src.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).reshape(h, w, c)
    except InputProblem:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputProblem(f"not an image Pillow can read, nor an .npy: {exc}") from exc
