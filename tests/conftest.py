"""Shared fixtures. Conversions are expensive, so each package is built once per session."""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

# The virtual arm64 device's fixtures (virtual_device, ssh_config_file...): _devices_fixtures.py
pytest_plugins = ["_devices_fixtures"]

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------------------------
# The skip rule (tests/README.md, "Skips"). Outside CI a test whose requirement is missing
# skips with the reason (`-rs` lists them). Under CI every skip is a failure, unless its reason
# matches a pattern of SKIPS_ALLOWED, which says why CI may skip it. The hooks below apply the
# rule to every skip however it is raised: pytest.skip, skipif marks, importorskip, a fixture
# that skips, a module skipped at collection.

#: ``re.search`` pattern on a skip's reason -> why CI may skip it.
SKIPS_ALLOWED: dict[str, str] = {
    r"^tflite_runtime is not installed \(the tflite backend\)": (
        "tflite-runtime 2.14 needs numpy<2 and this venv has numpy 2; the tflite backend is "
        "tested in its own numpy-1 environment by test_runtime_tflite_runtime.py"
    ),
}


def in_ci() -> bool:
    """Whether this run is CI: ``CI`` is ``true`` (any case) or ``1``; anything else is not."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def skip_allowed(reason: str) -> str | None:
    """Why CI may skip a test skipped for ``reason``; None when it may not."""
    for pattern, why in SKIPS_ALLOWED.items():
        if re.search(pattern, reason):
            return why
    return None


def _skip_reason(longrepr: object) -> str:
    """A skipped report's reason (its longrepr is ``(path, lineno, "Skipped: reason")``)."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


def _fail_unexpected_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):  # an xfail is no skip
        return
    reason = _skip_reason(report.longrepr)
    if skip_allowed(reason) is None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI, which must run it: {reason}\n"
            "(install what it needs, or add its reason to SKIPS_ALLOWED in tests/conftest.py "
            "with why CI may skip it)"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_unexpected_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_unexpected_skip(report)
    return report


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_threads() -> Generator[None, None, None]:
    """Fail the run if tests leave non-daemon threads running (a server or pool not closed).

    Autouse and session-scoped, so it is set up first and torn down last: the other session
    fixtures have stopped their servers by the time it looks.
    """
    from _threads import check_no_leftover_threads, non_daemon_threads

    before = non_daemon_threads()
    yield
    check_no_leftover_threads(before)


@pytest.fixture(scope="session")
def digits() -> Any:
    """scikit-learn's digits as an edgekit Dataset (default split and seed)."""
    from edgekit.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package converted from scikit-learn digits with the default QAT path (--fast).

    Its trained model is kept beside it (``digits.edgepkg.work/``): ``digits_trained_model``.
    """
    from edgekit.converters import convert

    out = tmp_path_factory.mktemp("pkgs") / "digits.edgepkg"
    # all INT8 (no float first conv): test_coral checks these stages against the Edge TPU
    convert("digits", out, fast=True, keep_work=True, float_stem="off", verbose=False)
    return out


@pytest.fixture(scope="session")
def digits_trained_model(digits_pkg: Path) -> Path:
    """The multi-exit model ``digits_pkg``'s conversion trained (``keep_work``), for the tests
    of options that act after training (``--target``...): ``convert --model THIS`` reuses its
    exits and weights, so it skips the training, which no target changes, and runs the rest
    (QAT, export, the target's steps, validation) as a conversion from scratch does."""
    path = digits_pkg.parent / f"{digits_pkg.name}.work" / "trained.keras"
    assert path.is_file(), f"convert(keep_work=True) kept no trained model at {path}"
    return path


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
    """A Fashion-MNIST package (--fast: a subset, short training) for the device and camera
    tests. 4 epochs, not --fast's 10 (its 300-step floor): its tests check that a trained model
    runs (accuracy > 0.6), which 4 epochs give with room (0.78 on the device tests' 64 images,
    0.82 for the camera's bandit stream; 0.83 and 0.86 with 10 epochs), in 0.62x the time."""
    from edgekit.converters import convert

    out = tmp_path_factory.mktemp("pkgs") / "fmnist.edgepkg"
    convert("fashion-mnist", out, fast=True, epochs=4, verbose=False)
    return out
