"""Datasets for training, calibration and evaluation: images as float32 NHWC in ``[0, 1]``.

Every loader returns a :class:`Dataset` with train, validation and test splits. Splits are
stratified (each class keeps its share in every split) and deterministic: the same source and
``seed`` give the same arrays on every call.

This module imports only the standard library and numpy at import time; pillow (image folders)
and scikit-learn (``digits``) are imported by the loaders that need them.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._errors import DatasetError, require

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_npz",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable that overrides :data:`FASHION_MNIST_DIR`.
FASHION_MNIST_ENV = "EDGEKIT_FASHION_MNIST"
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FASHION_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_GRAY_MODES = frozenset({"1", "L", "LA"})
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SPEC_FORMS = (
    "'fashion-mnist' (or 'fashion_mnist', 'fmnist')",
    "'fashion-mnist:/folder/with/idx/files'",
    "'digits'",
    "a path to a .npz file (or 'npz:/path')",
    "a path to an image folder ROOT/CLASS/*.png (or 'folder:/path')",
)
_SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


# --------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image classification dataset split into train, validation and test sets.

    ``x_*`` are float32 arrays of shape ``(N, H, W, C)`` with values in ``[0, 1]`` and
    ``C`` in ``{1, 3}``; ``y_*`` are int64 arrays of shape ``(N,)`` with values in
    ``[0, num_classes)``. ``labels[i]`` is the name of class ``i``. The structure is checked
    on construction and :class:`~edgekit.DatasetError` raised if it is wrong. ``notes`` say
    what loading changed (e.g. images resized to one size); convert logs and reports them.
    """

    name: str
    labels: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_dataset(self)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image, ``(H, W, C)``."""
        _, h, w, c = self.x_train.shape
        return int(h), int(w), int(c)

    @property
    def num_classes(self) -> int:
        """The number of classes (``len(labels)``)."""
        return len(self.labels)

    def describe(self) -> str:
        """One line: name, image shape, classes and split sizes."""
        h, w, c = self.input_shape
        return (
            f"{self.name}: {h}x{w}x{c} images, {self.num_classes} classes, "
            f"train {len(self.y_train)} / val {len(self.y_val)} / test {len(self.y_test)}"
        )

    def __repr__(self) -> str:
        return f"<Dataset {self.describe()}>"

    def limit(
        self, n_train: int | None = None, n_test: int | None = None, *, seed: int = 0
    ) -> Dataset:
        """A smaller copy for fast runs: a deterministic, stratified subsample of the splits.

        ``n_train`` caps the training set and shrinks the validation set by the same ratio;
        ``n_test`` caps the test set. ``None`` (or a number at least the current size) keeps
        a split whole. The kept examples stay in their original order.
        """
        # One generator per split, so capping one split does not change another's sample.
        rngs = [np.random.default_rng((seed, i)) for i in range(3)]
        x_train, y_train = self.x_train, self.y_train
        x_val, y_val = self.x_val, self.y_val
        x_test, y_test = self.x_test, self.y_test
        for what, n in (("n_train", n_train), ("n_test", n_test)):
            if n is not None:
                _check_limit(what, n)
        if n_train is not None and n_train < len(y_train):
            n_val = max(1, round(len(y_val) * n_train / len(y_train)))
            keep = _stratified_pick(y_train, n_train, rngs[0])[1]
            x_train, y_train = x_train[keep], y_train[keep]
            if n_val < len(y_val):
                keep = _stratified_pick(y_val, n_val, rngs[1])[1]
                x_val, y_val = x_val[keep], y_val[keep]
        if n_test is not None and n_test < len(y_test):
            keep = _stratified_pick(y_test, n_test, rngs[2])[1]
            x_test, y_test = x_test[keep], y_test[keep]
        return dataclasses.replace(
            self,
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            x_test=x_test,
            y_test=y_test,
        )


def _check_limit(what: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DatasetError(f"{what} must be a positive integer, got {n!r}", argument=what, value=n)


# --------------------------------------------------------------------------------------------
# The entry point


def load_dataset(spec: PathLike, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load a dataset named by ``spec``.

    Accepted forms: ``"fashion-mnist"`` (also ``"fashion_mnist"``, ``"fmnist"``),
    ``"fashion-mnist:/folder"``, ``"digits"``, a path to a ``.npz`` file, a path to an image
    folder (``ROOT/CLASS/*.png``), or an explicit ``"npz:/path"`` / ``"folder:/path"``.
    ``val_fraction`` and ``seed`` are passed to the loader; the others use their defaults.
    """
    if not isinstance(spec, str):
        return _load_path(Path(os.fspath(spec)), spec, val_fraction=val_fraction, seed=seed)
    text = spec.strip()
    key = text.lower()
    if key in _FASHION_NAMES:
        return load_fashion_mnist(val_fraction=val_fraction, seed=seed)
    if key == "digits":
        return load_digits(val_fraction=val_fraction, seed=seed)
    prefix, sep, rest = text.partition(":")
    prefix = prefix.lower()
    if sep and rest and prefix in _FASHION_NAMES:
        return load_fashion_mnist(rest, val_fraction=val_fraction, seed=seed)
    if sep and rest and prefix == "npz":
        return load_npz(rest, val_fraction=val_fraction, seed=seed)
    if sep and rest and prefix == "folder":
        return load_image_folder(rest, val_fraction=val_fraction, seed=seed)
    return _load_path(Path(text), spec, val_fraction=val_fraction, seed=seed)


def _load_path(path: Path, spec: PathLike, *, val_fraction: float, seed: int) -> Dataset:
    if path.is_dir():
        return load_image_folder(path, val_fraction=val_fraction, seed=seed)
    if path.is_file() and path.suffix.lower() == ".npz":
        return load_npz(path, val_fraction=val_fraction, seed=seed)
    if path.is_file():
        problem = f"{os.fspath(spec)!r} is a file but not a .npz file"
    elif path.suffix.lower() == ".npz" or os.sep in str(path) or "/" in str(path):
        problem = f"no such file or folder: {os.fspath(spec)!r}"
    else:
        problem = f"unknown dataset {os.fspath(spec)!r}"
    raise DatasetError(
        problem,
        hint="accepted forms: " + "; ".join(_SPEC_FORMS),
        spec=os.fspath(spec),
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


def load_fashion_mnist(
    root: PathLike | None = None, *, val_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """Fashion-MNIST (28x28 grayscale, 10 classes) from its four IDX files in ``root``.

    ``root`` defaults to ``$EDGEKIT_FASHION_MNIST`` if set, else :data:`FASHION_MNIST_DIR`
    (where ``apt-get install dataset-fashion-mnist`` puts the files). Files may be gzipped
    (``.gz``) or plain. The test split is the official 10,000 ``t10k`` images; the validation
    split is a stratified ``val_fraction`` of the 60,000 training images.
    """
    _check_fraction("val_fraction", val_fraction)
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
    folder = Path(os.fspath(root))
    hint = (
        "install it with `apt-get install dataset-fashion-mnist`, set "
        f"{FASHION_MNIST_ENV} to a folder holding the IDX files, or pass that folder "
        "(load_dataset('fashion-mnist:/path/to/folder'))"
    )
    if not folder.is_dir():
        raise DatasetError(
            f"Fashion-MNIST folder {str(folder)!r} does not exist", hint=hint, path=str(folder)
        )
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    files: dict[str, Path] = {}
    missing = []
    for key, stem in stems.items():
        found = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if found is None:
            missing.append(stem)
        else:
            files[key] = found
    if missing:
        raise DatasetError(
            f"Fashion-MNIST files missing in {str(folder)!r}: "
            + ", ".join(f"{m}[.gz]" for m in missing),
            hint=hint,
            path=str(folder),
            missing=missing,
        )
    train_x = _read_idx(files["train_x"], _IDX_IMAGES_MAGIC)
    train_y = _read_idx(files["train_y"], _IDX_LABELS_MAGIC)
    test_x = _read_idx(files["test_x"], _IDX_IMAGES_MAGIC)
    test_y = _read_idx(files["test_y"], _IDX_LABELS_MAGIC)
    for xs, ys, which in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if len(xs) != len(ys):
            raise DatasetError(
                f"Fashion-MNIST {which} files disagree: {len(xs)} images but {len(ys)} labels",
                hint="the files are from different datasets or damaged; reinstall them",
                path=str(folder),
            )
    source = f"Fashion-MNIST ({folder})"
    train_x, train_y = _check_xy(train_x, train_y, source=source, split="train")
    test_x, test_y = _check_xy(test_x, test_y, source=source, split="test")
    rng = np.random.default_rng(seed)
    rest, val = _stratified_pick(train_y, _split_size(val_fraction, len(train_y)), rng)
    return _make_dataset(
        "fashion-mnist",
        FASHION_MNIST_LABELS,
        source,
        train=(train_x[rest], train_y[rest]),
        val=(train_x[val], train_y[val]),
        test=(test_x, test_y),
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (``magic`` fixes the dimension count)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(
            f"cannot read IDX file {str(path)!r}: {exc}",
            hint="the file is damaged; reinstall or download it again",
            path=str(path),
        ) from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"IDX file {str(path)!r} is truncated: {len(data)} bytes, shorter than its header",
            hint="the file is damaged; reinstall or download it again",
            path=str(path),
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{str(path)!r} is not the expected IDX file: magic number 0x{found:08x}, "
            f"expected 0x{magic:08x}",
            hint="the file is damaged or is not Fashion-MNIST data",
            path=str(path),
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected or 0 in dims:
        raise DatasetError(
            f"IDX file {str(path)!r} has {len(data) - header} data bytes, but its header "
            f"announces dimensions {dims} ({expected} bytes); the file is truncated or garbled",
            hint="the file is damaged; reinstall or download it again",
            path=str(path),
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits(*, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, classes ``"0"``-``"9"``).

    Pixel values 0..16 are scaled to ``[0, 1]``. ``test_fraction`` and ``val_fraction`` are
    fractions of the whole set; the rest is the training split. Needs scikit-learn.
    """
    require("sklearn", "convert", purpose="the 'digits' dataset")
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[..., np.newaxis]
    y = np.asarray(bunch.target)
    labels = tuple(str(i) for i in range(10))
    return _split_and_make(
        "digits",
        labels,
        "scikit-learn digits",
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Image folders


def load_image_folder(
    root: PathLike,
    *,
    image_size: tuple[int, int] | None = None,
    grayscale: bool | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Images in ``root/CLASS_NAME/*.png|jpg|jpeg``; class names are the sorted folder names.

    ``image_size`` is ``(height, width)``; by default every image is resized to the most
    common size in the folder. Images become grayscale (one channel) if ``grayscale`` is
    True, or if it is None and every image is grayscale; otherwise RGB (three channels).
    ``test_fraction`` and ``val_fraction`` are fractions of the whole set.
    """
    _check_fractions(val_fraction, test_fraction)
    require("PIL", "convert", purpose="reading image folders")
    from PIL import Image

    folder = Path(os.fspath(root))
    layout = "expected ROOT/CLASS_NAME/IMAGE.png (or .jpg/.jpeg), one sub-folder per class"
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"image folder {str(folder)!r} {what}", hint=layout, path=str(folder))
    class_dirs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not class_dirs:
        raise DatasetError(
            f"image folder {str(folder)!r} has no class sub-folders", hint=layout, path=str(folder)
        )
    if len(class_dirs) < 2:
        raise DatasetError(
            f"image folder {str(folder)!r} has fewer than 2 classes "
            f"(only {class_dirs[0].name!r}); a classifier needs at least 2",
            hint=layout,
            path=str(folder),
        )
    files: list[Path] = []
    targets: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not images:
            raise DatasetError(
                f"class folder {str(class_dir)!r} has no .png/.jpg/.jpeg images",
                hint="add images or remove the folder",
                path=str(class_dir),
            )
        files += images
        targets += [label] * len(images)

    def unreadable(path: Path, exc: Exception) -> DatasetError:
        return DatasetError(
            f"cannot read image {str(path)!r}: {exc}",
            hint="remove or replace the file",
            path=str(path),
        )

    sizes: Counter[tuple[int, int]] = Counter()
    all_gray = True
    for path in files:
        try:
            with Image.open(path) as im:
                sizes[(im.height, im.width)] += 1
                all_gray = all_gray and im.mode in _GRAY_MODES
        except Exception as exc:  # pillow raises many types for damaged files
            raise unreadable(path, exc) from exc
    if image_size is None:
        image_size = sizes.most_common(1)[0][0]
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise DatasetError(f"image_size must be positive (height, width), got {image_size!r}")
    mode = "L" if (all_gray if grayscale is None else grayscale) else "RGB"

    pixels = []
    for path in files:
        try:
            with Image.open(path) as im:
                image = im.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels.append(np.asarray(image, dtype=np.uint8))
        except Exception as exc:
            raise unreadable(path, exc) from exc
    x = np.stack(pixels)
    y = np.asarray(targets, dtype=np.int64)
    notes: tuple[str, ...] = ()
    resized = sum(n for size, n in sizes.items() if size != (height, width))
    if resized:
        others = ", ".join(
            f"{n} at {h}x{w}" for (h, w), n in sizes.most_common() if (h, w) != (height, width)
        )
        notes = (
            f"resized {resized} of {len(files)} images to {height}x{width} (height x width) "
            f"({others}); pass image_size=(H, W) or resize them yourself to choose",
        )
    return _split_and_make(
        folder.resolve().name or str(folder),
        tuple(p.name for p in class_dirs),
        f"image folder {folder}",
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# .npz files


def load_npz(
    path: PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """A dataset saved with :func:`numpy.savez`.

    Keys: ``x_train, y_train`` (or just ``x, y``), optionally ``x_test, y_test`` and
    ``x_val, y_val``, and optionally ``labels`` (class names as strings; default ``"0"``..).
    Missing test or validation splits are cut, stratified, from the training data:
    ``test_fraction`` and ``val_fraction`` are fractions of that data. ``x`` is
    ``(N, H, W)`` or ``(N, H, W, C)``, either uint8 (0..255) or float in ``[0, 1]``.
    """
    _check_fractions(val_fraction, test_fraction)
    file = Path(os.fspath(path))
    if not file.is_file():
        raise DatasetError(
            f"no such .npz file: {str(file)!r}",
            hint="save one with numpy.savez(path, x_train=..., y_train=..., ...)",
            path=str(file),
        )
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"cannot read {str(file)!r} as a .npz file: {exc}",
            hint="save it with numpy.savez and plain (non-object) arrays; "
            "labels as a string array, e.g. np.array(['cat', 'dog'])",
            path=str(file),
        ) from exc
    source = f"npz file {file}"
    pool = ("x_train", "y_train") if "x_train" in arrays or "y_train" in arrays else ("x", "y")
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (x_key, y_key) in (
        ("train", pool),
        ("val", ("x_val", "y_val")),
        ("test", ("x_test", "y_test")),
    ):
        if x_key in arrays and y_key in arrays:
            pairs[split] = (arrays[x_key], arrays[y_key])
        elif x_key in arrays or y_key in arrays:
            have, lack = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise DatasetError(
                f"{source} has {have!r} but not {lack!r}",
                hint=f"save both {x_key!r} and {y_key!r}",
                path=str(file),
            )
    if "train" not in pairs:
        raise DatasetError(
            f"{source} has neither 'x_train'/'y_train' nor 'x'/'y' (keys: {sorted(arrays)})",
            hint="save it with numpy.savez(path, x_train=..., y_train=...) "
            "(optionally x_test, y_test, x_val, y_val, labels) or numpy.savez(path, x=..., y=...)",
            path=str(file),
        )
    checked = {
        split: _check_xy(x, y, source=source, split=split) for split, (x, y) in pairs.items()
    }
    if "labels" in arrays:
        raw = np.asarray(arrays["labels"])
        if raw.ndim != 1:
            raise DatasetError(
                f"{source}: 'labels' must be a 1-D array of class names, got shape {raw.shape}",
                path=str(file),
            )
        labels = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist())
    else:
        top = max((int(y.max()) for _, y in checked.values() if len(y)), default=0)
        labels = tuple(str(i) for i in range(max(top + 1, 0)))

    x_pool, y_pool = checked["train"]
    rng = np.random.default_rng(seed)
    n = len(y_pool)
    keep = np.arange(n)
    if "test" not in checked:
        keep, test = _stratified_pick(y_pool, _split_size(test_fraction, n), rng)
        checked["test"] = (x_pool[test], y_pool[test])
    if "val" not in checked:
        rest, val = _stratified_pick(y_pool[keep], _split_size(val_fraction, n), rng)
        checked["val"] = (x_pool[keep[val]], y_pool[keep[val]])
        keep = keep[rest]
    checked["train"] = (x_pool[keep], y_pool[keep])
    return _make_dataset(
        file.stem,
        labels,
        source,
        train=checked["train"],
        val=checked["val"],
        test=checked["test"],
    )


# --------------------------------------------------------------------------------------------
# Shared validation and splitting


def _check_xy(x: Any, y: Any, *, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one split's images and labels; return x as ``(N, H, W, C)`` and y as int64.

    The pixel dtype and range are checked later by :func:`_to_float`.
    """
    what = f"{source}: the {_SPLIT_NAMES.get(split, split)} images"
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DatasetError(
            f"{what} have shape {x.shape}; expected image data of shape (N, H, W[, C])",
            hint="pass a batch of images: (N, H, W) for grayscale or (N, H, W, C)",
            shape=x.shape,
        )
    if x.shape[-1] not in (1, 3):
        raise DatasetError(
            f"{what} have {x.shape[-1]} channels (shape {x.shape}); expected 1 or 3",
            hint="use grayscale (C=1) or RGB (C=3) images, channels last (NHWC)",
            shape=x.shape,
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        extra = " (one-hot? use y.argmax(axis=1))" if y.ndim == 2 else ""
        raise DatasetError(
            f"{source}: the {split} labels have shape {y.shape}; expected (N,){extra}",
            hint="pass one integer class id per image",
            shape=y.shape,
        )
    if len(x) != len(y):
        raise DatasetError(
            f"{source}: {len(x)} {split} images but {len(y)} labels",
            hint="x and y must have one entry per example, in the same order",
        )
    if y.dtype.kind not in "biu":
        whole = (
            y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == y.round()))
        )
        if not whole:
            raise DatasetError(
                f"{source}: the {split} labels are not integers (dtype {y.dtype})",
                hint="labels must be integer class ids 0..K-1; "
                "map names to ids and pass the names as 'labels'",
                dtype=str(y.dtype),
            )
    return x, y.astype(np.int64)


def _to_float(x: np.ndarray, *, source: str, split: str) -> np.ndarray:
    """Images as contiguous float32 in ``[0, 1]``: uint8 is divided by 255, floats checked."""
    what = f"{source}: the {_SPLIT_NAMES.get(split, split)} images"
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        return np.divide(out, np.float32(255.0), out=out)
    if x.dtype.kind != "f":
        raise DatasetError(
            f"{what} have dtype {x.dtype}; expected uint8 (0..255) or float in [0, 1]",
            hint="convert with x.astype(np.uint8) for 0..255 pixels, or scale to [0, 1]",
            dtype=str(x.dtype),
        )
    if x.size:
        low, high = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise DatasetError(
                f"{what} are floats in [{low:g}, {high:g}]; float images must be in [0, 1]",
                hint="divide 0..255 pixels by 255 (or save them as uint8)",
                low=low,
                high=high,
            )
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_dataset(ds: Dataset) -> None:
    """The structural checks every :class:`Dataset` passes (cheap: no pixel scan)."""
    source = ds.name
    if len(ds.labels) < 2:
        raise DatasetError(
            f"{source}: fewer than 2 classes ({len(ds.labels)}); a classifier needs at least 2",
            hint="add examples of at least one more class",
            num_classes=len(ds.labels),
        )
    shape = None
    for split in ("train", "val", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        name = _SPLIT_NAMES[split]
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
            raise DatasetError(
                f"{source}: x_{split} must be a float32 array (N, H, W, C), got "
                f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}",
                hint="use the edgekit.data loaders, which convert the images",
            )
        if x.shape[-1] not in (1, 3):
            raise DatasetError(
                f"{source}: the {name} images have {x.shape[-1]} channels; expected 1 or 3",
                hint="use grayscale (C=1) or RGB (C=3) images, channels last (NHWC)",
                shape=x.shape,
            )
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
            raise DatasetError(
                f"{source}: y_{split} must be an int64 array (N,)",
                hint="use the edgekit.data loaders, which convert the labels",
            )
        if len(x) != len(y):
            raise DatasetError(f"{source}: {len(x)} {name} images but {len(y)} labels")
        if len(y) == 0:
            fraction = {"val": "val_fraction", "test": "test_fraction"}.get(split)
            raise DatasetError(
                f"{source}: the {name} split is empty",
                hint="use more data"
                + (f" or a larger {fraction}" if fraction else " or smaller split fractions"),
                split=split,
            )
        if shape is None:
            shape = x.shape[1:]
        elif x.shape[1:] != shape:
            raise DatasetError(
                f"{source}: the {name} images are {x.shape[1:]}, the training images {shape}",
                hint="all splits must have the same image shape",
            )
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(ds.labels):
            raise DatasetError(
                f"{source}: the {name} labels span {low}..{high}, outside 0..{len(ds.labels) - 1} "
                f"({len(ds.labels)} classes)",
                hint="labels must be class ids 0..K-1, and 'labels' must name all K classes",
                low=low,
                high=high,
            )
    present = np.unique(ds.y_train)
    if len(present) < 2:
        raise DatasetError(
            f"{source}: the training split has fewer than 2 classes "
            f"({[ds.labels[i] for i in present]})",
            hint="a classifier needs examples of at least 2 classes",
        )


def _make_dataset(
    name: str,
    labels: Sequence[str],
    source: str,
    *,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    notes: tuple[str, ...] = (),
) -> Dataset:
    splits = {"train": train, "val": val, "test": test}
    arrays: dict[str, np.ndarray] = {}
    for split, (x, y) in splits.items():
        arrays[f"x_{split}"] = _to_float(x, source=source, split=split)
        arrays[f"y_{split}"] = np.ascontiguousarray(y, dtype=np.int64)
    return Dataset(name=name, labels=tuple(str(v) for v in labels), notes=notes, **arrays)


def _split_and_make(
    name: str,
    labels: Sequence[str],
    source: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    notes: tuple[str, ...] = (),
) -> Dataset:
    """Cut test, then validation (both fractions of the whole) from one pool of examples."""
    _check_fractions(val_fraction, test_fraction)
    x, y = _check_xy(x, y, source=source, split="train")
    rng = np.random.default_rng(seed)
    n = len(y)
    rest, test = _stratified_pick(y, _split_size(test_fraction, n), rng)
    train, val = _stratified_pick(y[rest], _split_size(val_fraction, n), rng)
    train, val = rest[train], rest[val]
    return _make_dataset(
        name,
        labels,
        source,
        train=(x[train], y[train]),
        val=(x[val], y[val]),
        test=(x[test], y[test]),
        notes=notes,
    )


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise DatasetError(
            f"{what} must be between 0 and 1 (exclusive), got {value!r}",
            hint="every split needs some examples",
            argument=what,
            value=value,
        )


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}",
            hint="leave some examples for training",
        )


def _split_size(fraction: float, n: int) -> int:
    """``round(fraction * n)``, but at least 1 and at most ``n - 1`` when ``n >= 2``."""
    size = round(fraction * n)
    return max(1, min(size, n - 1)) if n >= 2 else size


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder, exact)."""
    counts = counts.astype(np.int64)
    n = int(counts.sum())
    scaled = counts * int(total)
    quota = scaled // n
    short = int(total) - int(quota.sum())
    if short > 0:
        order = np.argsort(-(scaled % n), kind="stable")
        quota[order[:short]] += 1
    return quota


def _stratified_pick(
    y: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` indices of ``y``, each class in proportion; return ``(rest, picked)``.

    Both index arrays are sorted, so examples keep their original order.
    """
    n = max(0, min(int(n), len(y)))
    if n == 0 or len(y) == 0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = _allocate(counts, n)
    by_class = np.argsort(inverse.reshape(-1), kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    picked = [
        rng.permutation(by_class[start : start + count])[:k]
        for start, count, k in zip(starts, counts, quota)
    ]
    mask = np.zeros(len(y), dtype=bool)
    mask[np.concatenate(picked)] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
