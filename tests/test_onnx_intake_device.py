"""A package converted from a PyTorch export (ONNX intake) on the virtual Raspberry Pi:
``edgekit push`` installs onnxruntime there (the package is ONNX-only), and
``edgekit device predict`` classifies Fashion-MNIST images on the arm64 device as the host does.

The model is the small committed ResNet export (tests/fixtures/onnx, 13 M MACs), converted
with ``fast`` settings; the device is the session's ``virtual_device`` (its own ssh alias
here, so this module does not start the second fleet device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import edgekit
from edgekit.devices import VirtualDevice

pytestmark = pytest.mark.slow

RESNET = Path(__file__).parent / "fixtures" / "onnx" / "fmnist_resnet_nhwc.onnx"
ALIAS = "pi-onnx"
NAME = "onnxres"


def _cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """64 Fashion-MNIST test images as the camera gives them (uint8 HxWx1) and their labels."""
    try:
        ds = edgekit.load_dataset("fashion-mnist")
    except Exception as exc:  # the Debian package is not installed
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    x = np.round(ds.x_test[:64] * 255).astype(np.uint8)
    return x, ds.y_test[:64]


@pytest.fixture(scope="module")
def onnx_pkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not RESNET.is_file():  # committed: missing means a broken checkout
        pytest.fail(f"fixture model missing: {RESNET}")
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("EDGEKIT_CACHE")
    os.environ["EDGEKIT_CACHE"] = str(cache)  # the backbone features of this conversion
    try:
        data = edgekit.load_dataset("fashion-mnist").limit(2000, 400)
        out = tmp_path_factory.mktemp("onnxdev") / f"{NAME}.edgepkg"
        res = edgekit.convert(
            data, out, model=str(RESNET), mean=(0.286,), std=(0.353,), fast=True, epochs=2,
            verbose=False,
        )  # fmt: skip
    finally:
        if old is None:
            os.environ.pop("EDGEKIT_CACHE", None)
        else:
            os.environ["EDGEKIT_CACHE"] = old
    assert res.manifest.formats == ("onnx",)
    yield res.path


@pytest.fixture(scope="module")
def ssh_config(virtual_device: VirtualDevice, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return virtual_device.write_ssh_config(tmp_path_factory.mktemp("ssh") / "config", ALIAS)


def test_onnx_package_pushes_and_predicts_on_the_virtual_pi(
    onnx_pkg: Path, ssh_config: Path, images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    push = _cli("push", str(onnx_pkg), ALIAS, "--ssh-config", str(ssh_config), "--json")
    assert push.returncode == 0, push.stderr[-3000:]
    pushed = json.loads(push.stdout)[ALIAS]
    assert pushed["ok"], pushed
    # No TFLite stages: push picks onnxruntime for the Pi (its profile would be LiteRT).
    assert pushed["smoke"]["backend"] == "onnxruntime", pushed["smoke"]
    assert pushed["device"]["arch"] == "aarch64"

    x, y = images
    np.save(tmp_path / "x.npy", x)
    pred = _cli(
        "device", "predict", ALIAS, str(tmp_path / "x.npy"), "--package", NAME,
        "--policy", "full", "--json", "--ssh-config", str(ssh_config), timeout=900,
    )  # fmt: skip
    assert pred.returncode == 0, pred.stderr[-3000:]
    there = json.loads(pred.stdout)
    assert there["backend"] == "onnxruntime" and len(there["labels"]) == len(x)
    last = len(edgekit.read_manifest(onnx_pkg).exits) - 1
    assert set(there["exits"]) == {last}  # policy full: every image runs to the last exit

    # The same INT8 files on the host (x86 onnxruntime) give the same answers.
    with edgekit.load(onnx_pkg, backend="onnxruntime", policy="full") as m:
        here = [m.predict(xi) for xi in x]
    agree = float(np.mean(np.array(there["labels"]) == np.array([p.label for p in here])))
    print(f"device vs host top-1 agreement: {agree:.4f} on {len(x)} images")
    assert agree >= 0.98, agree
    score_diff = np.abs(np.array(there["scores"]) - np.array([p.score for p in here]))
    assert float(np.median(score_diff)) < 0.02, score_diff
    assert np.mean(np.array(there["labels"]) == y) > 0.8
