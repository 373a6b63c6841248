"""Shared fixtures. Conversions are expensive, so each package is built once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# The virtual arm64 device's fixtures (virtual_device, ssh_config...): tests/_devices_fixtures.py
pytest_plugins = ["_devices_fixtures"]

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def digits() -> Any:
    """scikit-learn's digits as an edgekit Dataset (default split and seed)."""
    from edgekit.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package converted from scikit-learn digits with the default QAT path (--fast)."""
    from edgekit.converters import convert

    out = tmp_path_factory.mktemp("pkgs") / "digits.edgepkg"
    convert("digits", out, fast=True, verbose=False)
    return out


@pytest.fixture(scope="session")
def digits_ptq_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, through PTQ, with exits given by layer name."""
    from edgekit.converters import convert

    out = tmp_path_factory.mktemp("pkgs") / "digits-ptq.edgepkg"
    convert(
        "digits", out, fast=True, quant="ptq", exits=("block2_relu", "block5_relu"), verbose=False
    )
    return out


@pytest.fixture(scope="session")
def fmnist_fast_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST package (--fast: a subset, short training) for the device tests."""
    from edgekit.converters import convert

    out = tmp_path_factory.mktemp("pkgs") / "fmnist.edgepkg"
    convert("fashion-mnist", out, fast=True, verbose=False)
    return out
