"""The onnxruntime backend's TensorRT/CUDA plumbing. This machine has neither provider, so
they are simulated at onnxruntime's provider API only (``get_available_providers``); the
sessions, the files and the fallback to the CPU are onnxruntime's own."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from edgekit.runtime.backends import onnxruntime as backend  # noqa: E402

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_options_order_and_tensorrt_settings(tmp_path: Path) -> None:
    got = backend.provider_options(ALL, tmp_path, int8=True, fp16=False)
    assert [p if isinstance(p, str) else p[0] for p in got] == ALL
    trt = dict(got[0][1])  # type: ignore[arg-type]
    assert trt == {
        "trt_int8_enable": "True",
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "engines"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "timing"),
    }
    assert backend.provider_options(["CPUExecutionProvider"], tmp_path, int8=True) == [
        "CPUExecutionProvider"
    ]


class _Spy:
    """Records what the backend hands to the real ``InferenceSession``."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.real = ort.InferenceSession

    def __call__(self, path: str, opts: Any = None, providers: Any = None) -> Any:
        self.calls.append(providers)
        with pytest.warns(UserWarning, match="not in available provider names"):
            return self.real(path, opts, providers=providers)


@pytest.fixture
def simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    spy = _Spy()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*ALL, "AzureExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    return spy


def test_stage_gets_tensorrt_int8_with_caches_in_the_state_dir(
    digits_pkg: Path,
    tmp_path: Path,
    simulated_gpu: _Spy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("EDGEKIT_STATE_DIR", str(tmp_path / "state"))
    path = digits_pkg / "onnx" / "stage_0.onnx"
    with caplog.at_level(logging.INFO, logger="edgekit.runtime"):
        stage = backend.open_stage(path, 1)
    (providers,) = simulated_gpu.calls
    name, trt = providers[0]
    assert name == "TensorrtExecutionProvider" and trt["trt_int8_enable"] == "True"
    cache = tmp_path / "state" / "tensorrt"
    assert trt["trt_engine_cache_path"] == str(cache / "engines")
    assert (cache / "engines").is_dir() and (cache / "timing").is_dir()
    assert [p if isinstance(p, str) else p[0] for p in providers] == ALL
    # the real session fell back to the CPU, and says so
    assert "onnx/stage_0.onnx runs on CPUExecutionProvider" in caplog.text
    assert backend.stage_providers()["onnx/stage_0.onnx"] == "CPUExecutionProvider"
    x = np.zeros((1, *stage.session.get_inputs()[0].shape[1:]), stage.input_dtype)
    feats, logits = stage(x)
    assert feats is not None and logits.shape == (1, 10)


def test_float_file_is_not_int8_and_fp16_can_be_turned_off(
    digits_pkg: Path, tmp_path: Path, simulated_gpu: _Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKIT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGEKIT_TRT_FP16", "0")
    backend.open_stage(digits_pkg / "onnx" / "full_float.onnx", 1)
    trt = simulated_gpu.calls[0][0][1]
    assert trt["trt_int8_enable"] == "False" and trt["trt_fp16_enable"] == "False"


def test_unwritable_cache_drops_tensorrt_not_the_stage(
    digits_pkg: Path,
    tmp_path: Path,
    simulated_gpu: _Spy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EDGEKIT_STATE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger="edgekit.runtime"):
        backend.open_stage(digits_pkg / "onnx" / "stage_0.onnx", 1)
    names = [p if isinstance(p, str) else p[0] for p in simulated_gpu.calls[0]]
    assert names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "TensorRT caches disabled" in caplog.text


def test_state_dir_of_a_pushed_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKIT_STATE_DIR", raising=False)
    stage = tmp_path / "opt" / "fmnist" / "releases" / "0123456789ab" / "onnx" / "stage_0.onnx"
    stage.parent.mkdir(parents=True)
    link = tmp_path / "opt" / "fmnist" / "current"
    link.symlink_to(stage.parent.parent)  # the runtime often loads through ROOT/NAME/current
    want = tmp_path / "opt" / "fmnist" / "state" / "tensorrt"
    assert backend.state_dir(stage) == want
    assert backend.state_dir(link / "onnx" / "stage_0.onnx") == want
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert backend.state_dir(tmp_path / "pkg" / "onnx" / "s.onnx") == (
        tmp_path / "cache" / "edgekit" / "tensorrt"
    )


def test_cpu_only_machine_is_unchanged(digits_pkg: Path) -> None:
    stage = backend.open_stage(digits_pkg / "onnx" / "stage_0.onnx", 1)
    assert stage.session.get_providers() == ["CPUExecutionProvider"]


def test_device_bench_records_the_provider_of_each_stage(
    digits_pkg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``edgekit bench PKG user@host`` runs on the device (the agent), here in-process."""
    import json

    from edgekit.devices._agent import main  # internal: the device agent, run in-process

    args = ["bench", str(digits_pkg), "--backend", "onnxruntime", "-n", "4", "--policies", "full"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["backend"] == "onnxruntime"
    stages = [f"onnx/stage_{k}.onnx" for k in range(out["exits"])]
    assert {k: out["providers"][k] for k in stages} == dict.fromkeys(stages, "CPUExecutionProvider")
