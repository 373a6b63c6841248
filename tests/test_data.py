"""Tests of edgekit.data on real data: Fashion-MNIST, sklearn digits, and files made here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekit import DatasetError
from edgekit.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    Dataset,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
)

Image = pytest.importorskip("PIL.Image")

SPLITS = ("train", "val", "test")


def check_structure(ds: Dataset) -> None:
    """Every split is float32 NHWC in [0, 1] with int64 labels in range."""
    for split in SPLITS:
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == ds.input_shape
        assert y.dtype == np.int64 and y.shape == (len(x),) and len(y) > 0
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < ds.num_classes
    assert len(ds.labels) == ds.num_classes


def same_arrays(a: Dataset, b: Dataset) -> bool:
    return all(
        np.array_equal(getattr(a, f"{k}_{s}"), getattr(b, f"{k}_{s}"))
        for s in SPLITS
        for k in ("x", "y")
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (the real files)


@pytest.fixture(scope="module")
def fmnist() -> Dataset:
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (dataset-fashion-mnist)")
    return load_fashion_mnist(FASHION_MNIST_DIR)


def test_fashion_mnist_shapes_and_counts(fmnist: Dataset) -> None:
    check_structure(fmnist)
    assert fmnist.name == "fashion-mnist"
    assert fmnist.labels == FASHION_MNIST_LABELS and fmnist.num_classes == 10
    assert fmnist.input_shape == (28, 28, 1)
    assert fmnist.x_train.shape == (54_000, 28, 28, 1)
    assert len(fmnist.y_val) == 6_000 and len(fmnist.y_test) == 10_000
    assert len(fmnist.y_train) + len(fmnist.y_val) == 60_000
    assert fmnist.x_train.max() == 1.0 and fmnist.x_test.min() == 0.0
    # uint8 / 255 exactly: every pixel is k/255 for an integer k.
    k = fmnist.x_test[:100] * 255
    assert np.array_equal(k, np.round(k))
    assert fmnist.describe() == (
        "fashion-mnist: 28x28x1 images, 10 classes, train 54000 / val 6000 / test 10000"
    )


def test_fashion_mnist_stratified(fmnist: Dataset) -> None:
    # The official data has 6,000 training and 1,000 test images per class.
    assert np.bincount(fmnist.y_val).tolist() == [600] * 10
    assert np.bincount(fmnist.y_train).tolist() == [5_400] * 10
    assert np.bincount(fmnist.y_test).tolist() == [1_000] * 10


def test_fashion_mnist_deterministic(fmnist: Dataset) -> None:
    again = load_dataset("fashion-mnist")
    assert same_arrays(fmnist, again)


def test_fashion_mnist_limit(fmnist: Dataset) -> None:
    small = fmnist.limit(1_000, 500)
    check_structure(small)
    assert np.bincount(small.y_train).tolist() == [100] * 10
    assert np.bincount(small.y_test).tolist() == [50] * 10
    assert len(small.y_val) == round(6_000 * 1_000 / 54_000)
    assert same_arrays(small, fmnist.limit(1_000, 500))
    assert fmnist.limit().x_train is fmnist.x_train


# --------------------------------------------------------------------------------------------
# Fashion-MNIST layout with small IDX files written here


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped if ``gz``."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_folder(
    root: Path, *, gz: bool, n_train: int = 40, n_test: int = 20
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in parts.items():
        write_idx(root / name, array, gz=gz)
    return parts


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_idx_files_gz_and_plain(tmp_path: Path, gz: bool) -> None:
    parts = make_idx_folder(tmp_path, gz=gz)
    ds = load_dataset(f"fashion-mnist:{tmp_path}")
    check_structure(ds)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (36, 4, 20)
    assert np.array_equal(ds.x_test[..., 0] * 255, parts["t10k-images-idx3-ubyte"])
    assert ds.y_test.tolist() == parts["t10k-labels-idx1-ubyte"].tolist()
    # train + val together are exactly the training file, each image with its label.
    images = parts["train-images-idx3-ubyte"].astype(np.float32) / 255
    labels = parts["train-labels-idx1-ubyte"]
    for x, y in [(ds.x_train, ds.y_train), (ds.x_val, ds.y_val)]:
        for img, label in zip(x[..., 0], y):
            matches = np.flatnonzero((images == img).all(axis=(1, 2)))
            assert len(matches) == 1 and labels[matches[0]] == label


def test_fashion_mnist_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_folder(tmp_path, gz=True)
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST", str(tmp_path))
    assert len(load_dataset("fmnist").y_test) == 20
    assert len(load_dataset("Fashion_MNIST").y_test) == 20


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_truncated_idx_names_the_file(tmp_path: Path, gz: bool) -> None:
    make_idx_folder(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    data = bad.read_bytes()[:-100]
    bad.unlink()
    if gz:
        bad = tmp_path / "train-images-idx3-ubyte.gz"
        bad.write_bytes(gzip.compress(data))
    else:
        bad.write_bytes(data)
    with pytest.raises(DatasetError, match="truncated") as info:
        load_fashion_mnist(tmp_path)
    assert str(bad) in info.value.message


def test_garbled_idx_files(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # wrong magic
    with pytest.raises(DatasetError, match="magic number 0x00000803, expected 0x00000801") as info:
        load_fashion_mnist(tmp_path)
    assert str(labels) in info.value.message

    broken_gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    broken_gz.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError, match="cannot read IDX file") as info:
        load_fashion_mnist(tmp_path)
    assert str(broken_gz) in info.value.message


def test_idx_count_mismatch(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(39, np.uint8), gz=False)
    with pytest.raises(DatasetError, match="40 images but 39 labels"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_missing_folder_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_fashion_mnist(tmp_path / "nowhere")
    assert "apt-get install dataset-fashion-mnist" in (info.value.hint or "")
    assert "EDGEKIT_FASHION_MNIST" in (info.value.hint or "")

    make_idx_folder(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing.*t10k-labels-idx1-ubyte") as info:
        load_fashion_mnist(tmp_path)
    assert "apt-get install dataset-fashion-mnist" in (info.value.hint or "")


# --------------------------------------------------------------------------------------------
# sklearn digits


def test_digits(digits: Dataset) -> None:
    check_structure(digits)
    assert digits.input_shape == (8, 8, 1)
    assert digits.labels == tuple("0123456789")
    n = len(digits.y_train) + len(digits.y_val) + len(digits.y_test)
    assert n == 1797
    assert (len(digits.y_test), len(digits.y_val)) == (round(0.2 * n), round(0.1 * n))
    assert digits.x_train.max() == 1.0
    assert load_dataset("digits").describe() == digits.describe()


def test_digits_stratified(digits: Dataset) -> None:
    total = np.bincount(np.concatenate([digits.y_train, digits.y_val, digits.y_test]), minlength=10)
    for y, fraction in [(digits.y_test, 0.2), (digits.y_val, 0.1), (digits.y_train, 0.7)]:
        counts = np.bincount(y, minlength=10)
        assert np.all(np.abs(counts - fraction * total) <= 1.5), (counts, fraction * total)


def test_digits_deterministic_per_seed(digits: Dataset) -> None:
    assert same_arrays(digits, load_digits(seed=0))
    other = load_digits(seed=1)
    assert not np.array_equal(other.y_test, digits.y_test) or not np.array_equal(
        other.x_test, digits.x_test
    )
    # Different seed, same class balance.
    assert np.bincount(other.y_test).tolist() == np.bincount(digits.y_test).tolist()


def test_limit(digits: Dataset) -> None:
    small = digits.limit(n_train=100, n_test=50)
    check_structure(small)
    assert (len(small.y_train), len(small.y_test)) == (100, 50)
    assert len(small.y_val) == round(len(digits.y_val) * 100 / len(digits.y_train))
    assert set(small.y_train.tolist()) == set(range(10))
    assert np.all(np.abs(np.bincount(small.y_train) - 10) <= 1)
    assert same_arrays(small, digits.limit(n_train=100, n_test=50))
    # Capping one split leaves the others' samples alone.
    assert np.array_equal(digits.limit(n_test=50).x_test, small.x_test)
    assert np.array_equal(digits.limit(n_train=100).x_train, small.x_train)
    # Kept examples are real examples, in their original order.
    rows = [np.flatnonzero((digits.x_train == x).all(axis=(1, 2, 3)))[0] for x in small.x_train]
    assert rows == sorted(rows)
    # Asking for more than there is keeps everything.
    big = digits.limit(10**6, 10**6)
    assert len(big.y_train) == len(digits.y_train) and len(big.y_test) == len(digits.y_test)
    with pytest.raises(DatasetError, match="positive integer"):
        digits.limit(n_train=0)


# --------------------------------------------------------------------------------------------
# .npz files


def test_npz_x_y_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 6, 5), dtype=np.uint8)
    y = np.repeat(np.arange(4), 25)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y)
    ds = load_npz(path)
    check_structure(ds)
    assert ds.name == "tiny" and ds.labels == ("0", "1", "2", "3")
    assert ds.input_shape == (6, 5, 1)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (70, 10, 20)
    assert np.bincount(ds.y_test).tolist() == [5] * 4
    # Every loaded image is one of the originals, divided by 255 exactly.
    originals = {img.tobytes(): label for img, label in zip(x, y)}
    for img, label in zip(ds.x_train[..., 0], ds.y_train):
        assert originals[np.round(img * 255).astype(np.uint8).tobytes()] == label
    assert same_arrays(ds, load_dataset(path)) and same_arrays(ds, load_dataset(f"npz:{path}"))


def test_npz_explicit_splits_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.random((60, 4, 4, 3))
    y_train = np.arange(60) % 3
    x_test = rng.random((9, 4, 4, 3)).astype(np.float32)
    y_test = np.arange(9) % 3
    path = tmp_path / "rgb.npz"
    labels = np.array(["cat", "dog", "emu"])
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, labels=labels)
    ds = load_npz(path, val_fraction=0.2)
    check_structure(ds)
    assert ds.labels == ("cat", "dog", "emu") and ds.input_shape == (4, 4, 3)
    assert np.array_equal(ds.x_test, x_test) and np.array_equal(ds.y_test, y_test)
    assert (len(ds.y_train), len(ds.y_val)) == (48, 12)
    assert np.bincount(ds.y_val).tolist() == [4, 4, 4]

    # Given validation data is used as it is.
    x_val, y_val = x_test[:3], np.array([2, 1, 0])
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, labels=labels)
    ds = load_npz(path)
    assert np.array_equal(ds.x_val, x_val) and ds.y_val.tolist() == [2, 1, 0]
    assert (len(ds.y_train), len(ds.y_test)) == (48, 12)


def save_npz(tmp_path: Path, **arrays: object) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_float_out_of_range(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 4, 4)) * 255
    path = save_npz(tmp_path, x=x, y=np.arange(40) % 2)
    with pytest.raises(DatasetError, match=r"float images must be in \[0, 1\]") as info:
        load_npz(path)
    assert "255" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((40, 16), np.uint8), np.arange(40) % 2, r"shape \(40, 16\).*\(N, H, W\[, C\]\)"),
        (np.zeros((40, 4, 4, 2), np.uint8), np.arange(40) % 2, "2 channels"),
        (np.zeros((40, 4, 4), np.uint8), np.arange(39) % 2, "40 train images but 39 labels"),
        (np.zeros((40, 4, 4), np.uint8), np.zeros(40, int), "fewer than 2 classes"),
        (np.zeros((40, 4, 4), np.uint8), (np.arange(40) % 2) + 0.5, "not integers"),
        (np.zeros((40, 4, 4), np.int32), np.arange(40) % 2, "expected uint8"),
    ],
    ids=["2d", "channels", "length", "one-class", "float-labels", "int32-pixels"],
)
def test_npz_invalid(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_npz(save_npz(tmp_path, x=x, y=y))


def test_npz_labels_out_of_range(tmp_path: Path) -> None:
    x = np.zeros((30, 4, 4), np.uint8)
    path = save_npz(tmp_path, x=x, y=np.arange(30) % 3, labels=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match=r"outside 0\.\.1"):
        load_npz(path)
    path = save_npz(tmp_path, x=x, y=(np.arange(30) % 3) - 1)
    with pytest.raises(DatasetError, match="labels span -1"):
        load_npz(path)


def test_npz_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither 'x_train'"):
        load_npz(save_npz(tmp_path, images=np.zeros((4, 2, 2))))
    with pytest.raises(DatasetError, match="has 'x_test' but not 'y_test'"):
        load_npz(save_npz(tmp_path, x=np.zeros((4, 2, 2)), y=[0, 1, 0, 1], x_test=np.zeros(1)))


# --------------------------------------------------------------------------------------------
# Image folders


def make_folder(root: Path, colors: dict[str, tuple[int, ...]], *, mode: str, n: int = 10) -> None:
    for name, color in colors.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            size = (12, 10) if i else (7, 9)  # (width, height): one odd size per class
            suffix = ".PNG" if i == 1 else ".png"
            Image.new(mode, size, color).save(root / name / f"{i:02d}{suffix}")


def test_image_folder_rgb(tmp_path: Path) -> None:
    make_folder(
        tmp_path, {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}, mode="RGB"
    )
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    Image.new("RGB", (12, 10), (255, 0, 0)).save(tmp_path / "red" / "extra.JPEG", quality=95)
    ds = load_image_folder(tmp_path)
    check_structure(ds)
    assert ds.labels == ("blue", "green", "red")  # sorted
    assert ds.input_shape == (10, 12, 3)  # most common size, (height, width)
    n = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert n == 31 and ds.name == tmp_path.name
    for x, y in [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test)]:
        for img, label in zip(x, y):
            expected = {0: (0, 0, 1), 1: (0, 1, 0), 2: (1, 0, 0)}[int(label)]
            assert np.allclose(img.mean(axis=(0, 1)), expected, atol=0.02)
    assert same_arrays(ds, load_dataset(tmp_path)) and same_arrays(
        ds, load_dataset(f"folder:{tmp_path}")
    )

    gray = load_image_folder(tmp_path, grayscale=True, image_size=(16, 8))
    assert gray.input_shape == (16, 8, 1)


def test_image_folder_says_how_many_images_it_resized(tmp_path: Path) -> None:
    make_folder(tmp_path, {"red": (255, 0, 0), "blue": (0, 0, 255)}, mode="RGB")
    ds = load_image_folder(tmp_path)
    assert ds.notes == (
        "resized 2 of 20 images to 10x12 (height x width) (2 at 9x7); pass image_size=(H, W) "
        "or resize them yourself to choose",
    )
    assert ds.limit(4).notes == ds.notes
    assert (
        load_image_folder(tmp_path, image_size=(9, 7))
        .notes[0]
        .startswith("resized 18 of 20 images to 9x7")
    )
    same = tmp_path / "same"
    make_folder(same, {"a": (1, 2, 3), "b": (4, 5, 6)}, mode="RGB")
    ds2 = load_image_folder(same, image_size=(10, 12))
    assert "resized 2 of 20" in ds2.notes[0]


def test_image_folder_grayscale(tmp_path: Path) -> None:
    make_folder(tmp_path, {"dark": (30,), "light": (220,)}, mode="L")
    ds = load_image_folder(tmp_path)
    check_structure(ds)
    assert ds.input_shape == (10, 12, 1) and ds.labels == ("dark", "light")
    assert np.all(ds.x_train[ds.y_train == 0] == np.float32(30 / 255))
    assert np.all(ds.x_train[ds.y_train == 1] == np.float32(220 / 255))
    rgb = load_image_folder(tmp_path, grayscale=False)
    assert rgb.input_shape == (10, 12, 3)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    make_folder(tmp_path, {"only": (1, 2, 3)}, mode="RGB", n=3)
    with pytest.raises(DatasetError, match="fewer than 2 classes"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty\' has no \.png/\.jpg/\.jpeg images"):
        load_image_folder(tmp_path)
    make_folder(tmp_path / "more", {"a": (0, 0, 0), "b": (9, 9, 9)}, mode="RGB", n=5)
    bad = tmp_path / "more" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(DatasetError, match="cannot read image") as info:
        load_image_folder(tmp_path / "more")
    assert str(bad) in info.value.message


# --------------------------------------------------------------------------------------------
# load_dataset and argument checks


def test_unknown_spec_lists_forms(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'cifar-100'") as info:
        load_dataset("cifar-100")
    for form in ("fashion-mnist", "digits", ".npz", "folder:"):
        assert form in (info.value.hint or "")
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"not a \.npz file"):
        load_dataset(str(tmp_path / "data.csv"))


def test_bad_fractions(tmp_path: Path) -> None:
    path = save_npz(tmp_path, x=np.zeros((20, 2, 2), np.uint8), y=np.arange(20) % 2)
    with pytest.raises(DatasetError, match="val_fraction must be between 0 and 1"):
        load_npz(path, val_fraction=0)
    with pytest.raises(DatasetError, match="must be below 1"):
        load_npz(path, val_fraction=0.5, test_fraction=0.5)


def test_too_small_for_a_split(tmp_path: Path) -> None:
    path = save_npz(tmp_path, x=np.zeros((2, 2, 2), np.uint8), y=[0, 1])
    with pytest.raises(DatasetError, match="the training split is empty"):
        load_npz(path)
