"""The float first conv (converters/_stem): the rewritten TFLite and ONNX files compute what
the INT8 ones do, on the same 8-bit I/O, in the real interpreters; what is not a stem is left
alone; the choice keeps INT8 when the outputs disagree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
litert = pytest.importorskip("ai_edge_litert.interpreter")

# internal: the rewrite and the files' 8-bit I/O, below convert
from edgekit.converters import _stem  # noqa: E402
from edgekit.converters._onnx import export_int8_onnx, read_io_quant  # noqa: E402
from edgekit.converters._quantize import tflite_io_quant, to_int8_tflite  # noqa: E402
from edgekit.runtime.backends.onnxruntime import session_options  # noqa: E402


def _stage(channels: int, seed: int = 0) -> Any:
    """A small stage-shaped Keras model (features + logits) reading ``channels`` channels."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    keras = pytest.importorskip("tf_keras")
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, channels), name="input")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    feats = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                                name="ek_features")(x)  # fmt: skip
    y = keras.layers.GlobalAveragePooling2D()(feats)
    logits = keras.layers.Dense(10, name="ek_logits")(y)
    return keras.Model(inp, [feats, logits])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = _stage(1)
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1.0, 2.0, (64, 12, 12, 1)).astype(np.float32)
    tfl = to_int8_tflite(model, calib)
    d = tmp_path_factory.mktemp("stem")
    io = tflite_io_quant(tfl)
    export_int8_onnx(model, d / "stage.onnx", calib, io_quant=io, activation_type="uint8")
    x8 = rng.integers(-128, 128, (128, 12, 12, 1)).astype(np.int8)
    return {"tflite": tfl, "onnx": d / "stage.onnx", "io": io, "x8": x8, "dir": d}


def _tflite_run(content: bytes, xs: np.ndarray) -> list[np.ndarray]:
    it = litert.Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    outs = sorted(it.get_output_details(), key=lambda d: str(d["name"]))
    got: list[list[np.ndarray]] = [[] for _ in outs]
    for x in xs:
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        for k, d in enumerate(outs):
            got[k].append(it.get_tensor(d["index"])[0].copy())
    return [np.stack(g) for g in got]


def _ops(content: bytes) -> list[str]:
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(content))
    names = {v: k for k, v in vars(fu.schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    return [
        names[fu.get_builtin_code_from_operator_code(m.operatorCodes[o.opcodeIndex])]
        for o in m.subgraphs[0].operators
    ]


def test_tflite_first_conv_in_float_same_io_same_outputs(files: dict[str, Any]) -> None:
    done = _stem.float_stem_tflite(files["tflite"])
    assert done is not None
    stem, layer = done
    assert layer == "CONV_2D 3x3, 1 -> 16 channels"
    ops = _ops(stem)
    assert ops[:3] == ["DEQUANTIZE", "CONV_2D", "QUANTIZE"]
    assert ops[3:] == _ops(files["tflite"])[1:]  # everything after the first conv untouched
    assert tflite_io_quant(stem) == files["io"]  # the stage contract: the same 8-bit I/O
    a, b = _tflite_run(files["tflite"], files["x8"]), _tflite_run(stem, files["x8"])
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == np.int8
        diff = np.abs(x.astype(int) - y.astype(int))
        assert diff.max() <= 2 and (diff == 0).mean() > 0.95, (diff.max(), (diff == 0).mean())
    assert (a[1].argmax(1) == b[1].argmax(1)).mean() >= 0.97
    assert _stem.float_stem_tflite(stem) is None  # already float: nothing more to rewrite


def test_onnx_first_conv_in_float_same_io_same_outputs(files: dict[str, Any]) -> None:
    proto = onnx.load(str(files["onnx"]))
    done = _stem.float_stem_onnx(proto)
    assert done is not None
    stem, layer = done
    assert layer == "Conv 3x3, 1 -> 16 channels"
    onnx.checker.check_model(stem)
    path = files["dir"] / "stem.onnx"
    onnx.save(stem, str(path))
    assert read_io_quant(path) == read_io_quant(files["onnx"])  # from the metadata now
    x = stem.graph.input[0].name
    readers = [n.op_type for n in stem.graph.node if x in n.input]
    assert readers == ["Cast"]  # no DequantizeLinear left for ORT to fold back into INT8
    # The runtime's options: ORT's default U8S8 kernels saturate on x86 without VNNI.
    opts = session_options(1)
    xs = (files["x8"].view(np.uint8) ^ np.uint8(0x80)).astype(np.uint8)  # the uint8 grid
    outs = sorted(o.name for o in stem.graph.output)
    a = ort.InferenceSession(str(files["onnx"]), opts).run(outs, {"input": xs})
    b = ort.InferenceSession(str(path), opts).run(outs, {"input": xs})
    for p, q in zip(a, b):
        diff = np.abs(p.astype(int) - q.astype(int))
        assert diff.max() <= 2 and (diff == 0).mean() > 0.95, (diff.max(), (diff == 0).mean())
    assert _stem.float_stem_onnx(stem) is None


def test_a_wide_first_conv_stays_int8(tmp_path: Path) -> None:
    model = _stage(8)
    calib = np.random.default_rng(1).normal(size=(32, 12, 12, 8)).astype(np.float32)
    tfl = to_int8_tflite(model, calib)
    assert _stem.float_stem_tflite(tfl) is None
    export_int8_onnx(model, tmp_path / "w.onnx", calib, io_quant=tflite_io_quant(tfl),
                     activation_type="uint8")  # fmt: skip
    assert _stem.float_stem_onnx(onnx.load(str(tmp_path / "w.onnx"))) is None


def test_choose_keeps_int8_when_outputs_disagree(files: dict[str, Any]) -> None:
    other = to_int8_tflite(_stage(1, seed=7), np.random.default_rng(2).uniform(
        -1.0, 2.0, (64, 12, 12, 1)).astype(np.float32))  # fmt: skip
    bad = _stem.choose("tflite", files["tflite"], other, "x", files["x8"], mode="auto")
    assert not bad.used and "disagree" in bad.reason and bad.agreement < 0.99
    stem, layer = _stem.float_stem_tflite(files["tflite"]) or (b"", "")
    on = _stem.choose("tflite", files["tflite"], stem, layer, files["x8"], mode="auto")
    assert on.used and on.agreement >= 0.97 and on.int8_us > 0 and on.float_us > 0
    timed = _stem.choose("tflite", files["tflite"], stem, layer, files["x8"], mode="measured")
    assert timed.reason.startswith("measured") and timed.used is (
        timed.float_us <= _stem.GAIN * timed.int8_us
    )
    assert set(on.as_dict()) == {"format", "layer", "int8_us", "float_us", "agreement",
                                 "used", "reason"}  # fmt: skip


def test_apply_rewrites_stage_and_unsplit_together(files: dict[str, Any], tmp_path: Path) -> None:
    s0, full = tmp_path / "stage_0.tflite", tmp_path / "full.tflite"
    s0.write_bytes(files["tflite"])
    full.write_bytes(files["tflite"])
    choice = _stem.apply_float_stem("tflite", s0, full, files["x8"], mode="auto")
    assert choice is not None and choice.used
    assert _ops(s0.read_bytes())[0] == _ops(full.read_bytes())[0] == "DEQUANTIZE"
    assert _stem.apply_float_stem("tflite", s0, full, files["x8"]) is None  # nothing left


def test_convert_option_is_checked() -> None:
    from edgekit.converters import ConvertOptions

    with pytest.raises(ValueError, match="float_stem must be one of auto, measured, off"):
        ConvertOptions(float_stem="yes")
