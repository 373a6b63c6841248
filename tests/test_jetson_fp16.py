"""Jetson, FP16 flavour (``--jetson-precision fp16``): the files' rules checked on the files,
the stage contract (int8 bytes on the TFLite grid, chained stages) and the accuracy checked
in onnxruntime on this CPU (no Jetson here: TensorRT's FP16 engine is not run)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit._package import QuantParams  # internal: a stage's int8 scale and zero point

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
nh = onnx.numpy_helper


def _grid(lo: float, hi: float) -> QuantParams:
    """The int8 grid the TFLite side would pick for the real range [lo, hi]."""
    scale = (hi - lo) / 255.0
    return QuantParams(scale, round(-128 - lo / scale), "int8")


def _quantize(x: np.ndarray, q: QuantParams) -> np.ndarray:
    return np.clip(np.round(x / q.scale) + q.zero_point, -128, 127).astype(np.int8)


def _real(x: np.ndarray, q: QuantParams) -> np.ndarray:
    return q.scale * (x.astype(np.float32) - q.zero_point)


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-stage model (head: features + logits; tail: logits), each stage exported as
    FP16, as INT8 Jetson and as plain float ONNX, on one set of boundary parameters."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    keras = pytest.importorskip("tf_keras")
    from edgekit.converters._fp16 import (  # internal: the FP16 export, below convert
        export_jetson_fp16_onnx,
    )
    from edgekit.converters._jetson import (  # internal: the INT8 Jetson export
        export_jetson_onnx,
    )
    from edgekit.converters._onnx import (  # internal: the float ONNX export
        export_float_onnx,
    )

    keras.utils.set_random_seed(0)
    conv1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="ek_features")
    head_fc = keras.layers.Dense(10, name="ek_logits")
    conv2 = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")
    tail_fc = keras.layers.Dense(10, name="ek_logits")
    inp = keras.Input((8, 8, 4), name="input")
    feats = conv1(inp)
    head = keras.Model(
        inp, [feats, head_fc(keras.layers.GlobalAveragePooling2D()(feats))], name="head"
    )
    t_in = keras.Input((8, 8, 8), name="input")
    tail = keras.Model(
        t_in, tail_fc(keras.layers.GlobalAveragePooling2D()(conv2(t_in))), name="tail"
    )

    rng = np.random.default_rng(0)
    calib = rng.normal(0.3, 1.0, (256, 8, 8, 4)).astype(np.float32)
    f, lg0 = head.predict(calib, verbose=0)
    lg1 = tail.predict(f, verbose=0)
    q_in, q_f = _grid(float(calib.min()), float(calib.max())), _grid(0.0, float(f.max()))
    q_l0 = _grid(float(lg0.min()), float(lg0.max()))
    q_l1 = _grid(float(lg1.min()), float(lg1.max()))
    io_head = {"input": q_in, "ek_features": q_f, "ek_logits": q_l0}
    io_tail = {"input": q_f, "ek_logits": q_l1}  # the tail reads the head's features grid

    d = tmp_path_factory.mktemp("jetson_fp16")
    for name, model, io, feed in (("head", head, io_head, calib), ("tail", tail, io_tail, f)):
        export_jetson_fp16_onnx(model, d / f"{name}_fp16.onnx", feed, io_quant=io)
        export_jetson_onnx(model, d / f"{name}_int8.onnx", feed, io_quant=io)
        export_float_onnx(model, d / f"{name}_float.onnx")
    return {
        "dir": d,
        "calib": calib,
        "q": {"input": q_in, "features": q_f, "logits0": q_l0, "logits1": q_l1},
        "head": head,
        "tail": tail,
    }


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp16_files_follow_the_rules(two_stages: dict[str, Any]) -> None:
    from edgekit.converters._fp16 import fp16_problems  # internal: the FP16 stage rules

    d = two_stages["dir"]
    for name in ("head", "tail"):
        proto = onnx.load(str(d / f"{name}_fp16.onnx"))
        assert fp16_problems(proto) == [], name
        ops = {n.op_type for n in proto.graph.node}
        assert not ops & {"QuantizeLinear", "DequantizeLinear"}, name
        floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        weights = [
            i for i in proto.graph.initializer if i.data_type in floats and "_ek_" not in i.name
        ]
        assert len(weights) >= 2 and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
        io = [*proto.graph.input, *proto.graph.output]
        assert {t.type.tensor_type.elem_type for t in io} == {onnx.TensorProto.INT8}
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}


def test_the_rules_can_fail(two_stages: dict[str, Any]) -> None:
    """The checker refuses what is not an FP16 stage: the INT8 Jetson file, the float one."""
    from edgekit.converters._fp16 import fp16_problems  # internal: the FP16 stage rules

    d = two_stages["dir"]
    int8 = fp16_problems(onnx.load(str(d / "head_int8.onnx")))
    assert any("quantized ops" in p for p in int8)
    assert any("computes in float32" in p for p in int8)
    flt = fp16_problems(onnx.load(str(d / "head_float.onnx")))
    assert any("is not int8" in p for p in flt)
    assert any("float32 weights" in p for p in flt)


def test_values_beyond_float16_range_are_refused(tmp_path: Path) -> None:
    """A stage whose activations pass 65504 on the calibration data is a clear error, not a
    file whose FP16 engine would overflow (onnxruntime on this CPU would not show it)."""
    keras = pytest.importorskip("tf_keras")
    from edgekit._errors import ConversionError
    from edgekit.converters._fp16 import (  # internal: the FP16 export, below convert
        export_jetson_fp16_onnx,
    )

    inp = keras.Input((4,), name="input")
    big = keras.layers.Dense(
        8, activation="relu", kernel_initializer=keras.initializers.Constant(3e4)
    )
    small = keras.layers.Dense(
        10, name="ek_logits", kernel_initializer=keras.initializers.Constant(1e-4)
    )
    model = keras.Model(inp, small(big(inp)))
    calib = np.random.default_rng(0).normal(0.0, 1.0, (64, 4)).astype(np.float32)
    logits = model.predict(calib, verbose=0)
    io = {
        "input": _grid(float(calib.min()), float(calib.max())),
        "ek_logits": _grid(float(logits.min()), float(logits.max())),
    }
    with pytest.raises(ConversionError, match="leave float16's range"):
        export_jetson_fp16_onnx(model, tmp_path / "s.onnx", calib, io_quant=io)
    assert not (tmp_path / "s.onnx").exists()
    # without calibration data nothing can be checked, and the file is written
    export_jetson_fp16_onnx(model, tmp_path / "s.onnx", io_quant=io)
    assert (tmp_path / "s.onnx").exists()


def test_weights_below_float16_precision_are_refused(tmp_path: Path) -> None:
    """Weights float16 cannot hold (1e-8: float16 keeps nothing below 6e-8) change the int8
    outputs: a clear error naming the output, not a quietly wrong stage."""
    keras = pytest.importorskip("tf_keras")
    from edgekit._errors import ConversionError
    from edgekit.converters._fp16 import (  # internal: the FP16 export, below convert
        export_jetson_fp16_onnx,
    )

    keras.utils.set_random_seed(0)
    init = keras.initializers.RandomNormal
    inp = keras.Input((4,), name="input")
    tiny = keras.layers.Dense(8, kernel_initializer=init(stddev=1e-8), bias_initializer="zeros")
    out = keras.layers.Dense(10, name="ek_logits", kernel_initializer=init(stddev=1e4))
    model = keras.Model(inp, out(tiny(inp)))
    calib = np.random.default_rng(0).normal(0.0, 1.0, (64, 4)).astype(np.float32)
    logits = model.predict(calib, verbose=0)
    io = {
        "input": _grid(float(calib.min()), float(calib.max())),
        "ek_logits": _grid(float(logits.min()), float(logits.max())),
    }
    with pytest.raises(ConversionError, match="float16 changes the stage's 'ek_logits'"):
        export_jetson_fp16_onnx(model, tmp_path / "s.onnx", calib, io_quant=io)


def test_chained_fp16_stages_keep_the_stage_contract_and_the_float_accuracy(
    two_stages: dict[str, Any],
) -> None:
    """Head -> tail on int8 bytes: the FP16 chain, and INT8 Jetson head -> FP16 tail (the
    bytes between stages are the same whatever the flavour), against the float model."""
    d, q, calib = two_stages["dir"], two_stages["q"], two_stages["calib"]
    x = _quantize(calib, q["input"])
    xr = _real(x, q["input"])  # what the stage sees, so only the stage's own error counts
    f_real, l0_real = two_stages["head"].predict(xr, verbose=0)
    l1_real = two_stages["tail"].predict(f_real, verbose=0)

    f16, l0 = _session(d / "head_fp16.onnx").run(["ek_features", "ek_logits"], {"input": x})
    assert f16.dtype == l0.dtype == np.int8 and f16.shape == f_real.shape
    # features on the boundary grid: one quantum at most from the float model's, and ReLU
    # features never below the grid's zero point
    assert np.abs(_real(f16, q["features"]) - f_real).max() <= 1.01 * q["features"].scale
    assert f16.min() >= q["features"].zero_point
    (l1,) = _session(d / "tail_fp16.onnx").run(["ek_logits"], {"input": f16})
    f8, _ = _session(d / "head_int8.onnx").run(["ek_features", "ek_logits"], {"input": x})
    (l1_mixed,) = _session(d / "tail_fp16.onnx").run(["ek_logits"], {"input": f8})

    err0 = float(np.abs(_real(l0, q["logits0"]) - l0_real).mean() / q["logits0"].scale)
    err1 = float(np.abs(_real(l1, q["logits1"]) - l1_real).mean() / q["logits1"].scale)
    agree0 = float((l0.argmax(1) == l0_real.argmax(1)).mean())
    agree1 = float((l1.argmax(1) == l1_real.argmax(1)).mean())
    agree_mixed = float((l1_mixed.argmax(1) == l1_real.argmax(1)).mean())
    print(
        f"fp16 vs float: mean |logit error| {err0:.3f} / {err1:.3f} quanta (head / chained "
        f"tail), argmax agreement {agree0:.4f} / {agree1:.4f}; int8 head -> fp16 tail "
        f"{agree_mixed:.4f}"
    )
    # float16 rounding stays well inside the 8-bit output grid
    assert err0 < 0.5 and err1 < 0.5
    assert agree0 >= 0.97 and agree1 >= 0.97
    assert agree_mixed >= 0.9


def test_runtime_opens_an_fp16_stage_for_tensorrt_fp16(
    two_stages: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With TensorRT present (simulated at onnxruntime's provider API only), the runtime
    gives an FP16 file TensorRT FP16 without INT8; the real session runs on the CPU."""
    from edgekit.runtime.backends import onnxruntime as backend

    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    calls: list[Any] = []
    real = ort.InferenceSession

    def spy(path: str, opts: Any = None, providers: Any = None) -> Any:
        calls.append(providers)
        with pytest.warns(UserWarning, match="not in available provider names"):
            return real(path, opts, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: have)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setenv("EDGEKIT_STATE_DIR", str(tmp_path))
    stage_file = tmp_path / "pkg" / "onnx" / "stage_0.onnx"
    stage_file.parent.mkdir(parents=True)
    stage_file.write_bytes((two_stages["dir"] / "head_fp16.onnx").read_bytes())
    with caplog.at_level(logging.INFO, logger="edgekit.runtime"):
        stage = backend.open_stage(stage_file, 1)
    name, trt = calls[0][0]
    assert name == "TensorrtExecutionProvider"
    assert trt["trt_int8_enable"] == "False" and trt["trt_fp16_enable"] == "True"
    assert "onnx/stage_0.onnx runs on CPUExecutionProvider" in caplog.text
    feats, logits = stage(np.zeros((1, 8, 8, 4), np.int8))
    assert feats is not None and feats.dtype == np.int8 and logits.shape == (1, 10)


def test_fp16_needs_target_jetson(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from edgekit.cli import main

    out = tmp_path / "x.edgepkg"
    args = ["convert", "--dataset", "digits", "--out", str(out), "--jetson-precision", "fp16"]
    assert main(args) == 2
    assert "jetson_precision='fp16' is for target='jetson'" in capsys.readouterr().err
    assert not out.exists()
    from edgekit.converters import ConvertOptions

    with pytest.raises(ValueError, match="'int8' or 'fp16'"):
        ConvertOptions(target="jetson", jetson_precision="fp32")
    # the ONNX intake writes INT8 stages only: refused before anything is read
    args = [*args[:-2], "--model", str(tmp_path / "m.onnx"), "--target", "jetson"]
    assert main([*args, "--jetson-precision", "fp16"]) == 2
    assert "the ONNX intake writes INT8 stages only" in capsys.readouterr().err
    assert not out.exists()
    # nor does it write TensorRT's symmetric form or Edge TPU files: jetson/coral are refused
    for target in ("jetson", "coral"):
        assert main([*args[:-1], target]) == 2
        assert f"target={target!r} is for Keras models" in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.slow
def test_convert_target_jetson_fp16_cli(tmp_path: Path, digits_trained_model: Path) -> None:
    """The whole path: ``edgekit convert --target jetson --jetson-precision fp16``, then the
    package's stages chained by the runtime, and mixed with its TFLite stages."""
    from edgekit import load
    from edgekit.cli import main
    from edgekit.converters._fp16 import fp16_problems  # internal: the FP16 stage rules

    out = tmp_path / "j16.edgepkg"
    # The model digits_pkg's conversion trained: the FP16 export comes after training.
    model = str(digits_trained_model)
    args = ["convert", "--dataset", "digits", "--model", model, "--out", str(out), "--fast"]
    assert main([*args, "--quiet", "--target", "jetson", "--jetson-precision", "fp16"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["targets"]["jetson_precision"] == "fp16"
    assert manifest["onnx_activation_type"] == "int8"  # the stage I/O bytes
    stages = sorted((out / "onnx").glob("stage_*.onnx"))
    assert len(stages) == len(manifest["stages"]) >= 2
    for p in [*stages, out / "onnx" / "full.onnx"]:
        assert fp16_problems(onnx.load(str(p))) == [], p.name
    # float16 weights: the unsplit FP16 file is about half the float32 one
    half = (out / "onnx" / "full.onnx").stat().st_size
    assert half < 0.6 * (out / "onnx" / "full_float.onnx").stat().st_size
    report = json.loads((out / "report.json").read_text())
    jet = report["targets"]["jetson"]
    print("\n".join(jet["lines"]))
    assert jet["precision"] == "fp16"
    assert jet["max_drop_vs_float_points"] <= 1.0
    assert jet["max_drop_points"] <= 0.5  # not below the default INT8 ONNX stages either
    assert report["agreement"]["onnx_chain_vs_unsplit"] >= 0.99
    assert min(report["agreement"]["tflite_vs_onnx_per_exit"]) >= 0.97
    assert "FP16" in (out / "report.md").read_text()

    # the runtime chains the FP16 stages, and a TFLite head feeds an FP16 tail as is
    from edgekit.data import load_dataset
    from edgekit.runtime import Quantizer
    from edgekit.runtime.backends import litert
    from edgekit.runtime.backends import onnxruntime as ort_backend

    data = load_dataset("digits", seed=0)
    x, y = data.x_test[:300], data.y_test[:300]
    model = load(out, backend="onnxruntime", policy="full", verify=False)
    labels, _ = model.run_all_exits(x)
    acc = float((labels[:, -1] == y).mean())
    mf = model.manifest
    x_q = Quantizer(mf.input, mf.stages[0].input.quant).batch(x)
    feats, _ = litert.open_stage(out / mf.stages[0].files["tflite"], 1)(x_q)
    for st in mf.stages[1:]:
        feats, logits = ort_backend.open_stage(out / st.files["onnx"], 1)(feats)
    mixed = float((logits.argmax(1) == y).mean())
    print(f"runtime (onnxruntime, FP16 stages) {acc:.4f}; TFLite head -> FP16 tail {mixed:.4f}")
    assert acc >= 0.9 and mixed >= 0.9
    assert abs(acc - mixed) <= 0.02
