"""ONNX export of stages: float and INT8 with 8-bit I/O (real tf2onnx and ONNX Runtime)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("tf_keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from edgekit import ConversionError  # noqa: E402
from edgekit._package import QuantParams  # noqa: E402
from edgekit.converters._onnx import (  # noqa: E402
    export_float_onnx,
    export_int8_onnx,
    read_io_quant,
)
from edgekit.runtime.backends.onnxruntime import session_options  # noqa: E402

pytestmark = pytest.mark.slow

ACTIVATION_TYPES = ["uint8", "int8"]
INPUT_QUANT = QuantParams(1 / 255, -128, "int8")
ELEM = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8}


def tflite_quant(a: np.ndarray) -> QuantParams:
    """int8 quantization covering ``a``'s range (and 0), as the TFLite converter picks it."""
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = (hi - lo) / 255
    return QuantParams(scale, int(np.clip(round(-128 - lo / scale), -128, 127)), "int8")


def to_act(raw: np.ndarray, act: str) -> np.ndarray:
    """uint8 image bytes in the 8-bit type of the input (int8 shifts by 128)."""
    return raw if act == "uint8" else (raw.astype(np.int16) - 128).astype(np.int8)


def dequant(q: np.ndarray, p: QuantParams) -> np.ndarray:
    return p.scale * (q.astype(np.float32) - p.zero_point)


def run(path: Path, x: np.ndarray, act: str) -> list[np.ndarray]:
    # The sessions edgekit itself opens: exact int8 kernels even on x86 without VNNI.
    so = session_options(1)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out: list[np.ndarray] = sess.run(None, {"input": x})
    return out


@dataclass
class Net:
    """A two-exit network cut into stage 0 (image -> features, logits0) and stage 1."""

    stage0: Any
    stage1: Any
    calib: np.ndarray  # float images for calibration
    raw: np.ndarray  # uint8 evaluation images
    feats: np.ndarray  # Keras float outputs on ``raw / 255``
    logits0: np.ndarray
    logits1: np.ndarray
    io0: dict[str, QuantParams]
    io1: dict[str, QuantParams]


def images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 noise images whose class is their brightness level."""
    y = rng.integers(0, 10, n)
    x = np.clip(rng.normal((y + 0.5)[:, None, None, None] / 10, 0.1, (n, 16, 16, 1)), 0, 1)
    return np.round(x * 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def net() -> Net:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    conv3 = keras.layers.Conv2D(128, 3, activation="relu", name="conv3")
    gap1 = keras.layers.GlobalAveragePooling2D()
    head1 = keras.layers.Dense(10, name="logits1")

    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    feats = keras.layers.Conv2D(16, 3, activation="relu", name="features")(x)
    logits0 = keras.layers.Dense(10, name="logits0")(keras.layers.GlobalAveragePooling2D()(feats))
    full = keras.Model(inp, [logits0, head1(gap1(conv3(feats)))])
    full.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    raw_train, y_train = images(rng, 512)
    full.fit(raw_train / 255, [y_train, y_train], epochs=12, batch_size=32, verbose=0)

    stage0 = keras.Model(inp, [feats, logits0])
    inp1 = keras.Input((12, 12, 16))
    stage1 = keras.Model(inp1, head1(gap1(conv3(inp1))))

    calib = images(rng, 128)[0].astype(np.float32) / 255
    raw = images(rng, 256)[0]
    f, l0 = stage0.predict(raw / 255, verbose=0)
    cf, cl0 = stage0.predict(calib, verbose=0)
    return Net(
        stage0,
        stage1,
        calib,
        raw,
        f,
        l0,
        stage1.predict(f, verbose=0),
        {"input": INPUT_QUANT, "features": tflite_quant(cf), "logits0": tflite_quant(cl0)},
        {"input": tflite_quant(cf), "logits1": tflite_quant(stage1.predict(cf, verbose=0))},
    )


@dataclass
class Exported:
    act: str
    stage0: Path
    stage1: Path
    used0: dict[str, QuantParams]
    used1: dict[str, QuantParams]


@pytest.fixture(scope="module", params=ACTIVATION_TYPES)
def exported(request: pytest.FixtureRequest, net: Net, tmp_path_factory: Any) -> Exported:
    act = request.param
    d = tmp_path_factory.mktemp(f"onnx-{act}")
    s0, s1 = d / "stage0.onnx", d / "stage1.onnx"
    used0 = export_int8_onnx(net.stage0, s0, net.calib, io_quant=net.io0, activation_type=act)
    calib1 = net.stage0.predict(net.calib, verbose=0)[0]
    used1 = export_int8_onnx(net.stage1, s1, calib1, io_quant=net.io1, activation_type=act)
    return Exported(act, s0, s1, used0, used1)


def test_float_export_matches_keras(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "stage0_float.onnx"
    export_float_onnx(net.stage0, path)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["features", "logits0"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f, l0 = sess.run(None, {"input": net.raw[:32].astype(np.float32) / 255})
    np.testing.assert_allclose(f, net.feats[:32], atol=1e-4)
    np.testing.assert_allclose(l0, net.logits0[:32], atol=1e-4)


def test_io_is_8bit_with_requested_quant(net: Net, exported: Exported) -> None:
    model = onnx.load(str(exported.stage0))
    graph = model.graph
    elem = ELEM[exported.act]
    assert [(v.name, v.type.tensor_type.elem_type) for v in graph.input] == [("input", elem)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in graph.output] == [
        ("features", elem),
        ("logits0", elem),
    ]
    for v in [*graph.input, *graph.output]:
        batch = v.type.tensor_type.shape.dim[0]
        assert not batch.HasField("dim_value"), f"{v.name} has a fixed batch dimension"

    for path, io, used in [
        (exported.stage0, net.io0, exported.used0),
        (exported.stage1, net.io1, exported.used1),
    ]:
        back = read_io_quant(path)
        assert back == used
        assert set(back) == set(io)
        for name, q in io.items():
            want = q.as_dtype(exported.act)
            assert back[name].dtype == exported.act
            assert back[name].zero_point == want.zero_point
            assert back[name].scale == pytest.approx(want.scale, rel=1e-7)
    shift = 128 if exported.act == "uint8" else 0
    assert exported.used0["input"].zero_point == -128 + shift


def test_int8_outputs_match_keras(net: Net, exported: Exported) -> None:
    f_q, l0_q = run(exported.stage0, to_act(net.raw, exported.act), exported.act)
    assert f_q.dtype == np.dtype(exported.act)
    assert f_q.shape == net.feats.shape
    for q, ref, name in [(f_q, net.feats, "features"), (l0_q, net.logits0, "logits0")]:
        p = exported.used0[name]
        mae_steps = np.abs(dequant(q, p) - ref).mean() / p.scale
        assert mae_steps < 1.0, f"{name}: mean abs error {mae_steps:.2f} quantization steps"
    agree = (l0_q.argmax(1) == net.logits0.argmax(1)).mean()
    assert agree >= 0.95


def test_stages_chain_on_raw_bytes(net: Net, exported: Exported) -> None:
    # The bytes stage 0 returns are stage 1's input, with no requantization in between.
    assert read_io_quant(exported.stage1)["input"] == exported.used0["features"]
    f_q, _ = run(exported.stage0, to_act(net.raw, exported.act), exported.act)
    (l1_q,) = run(exported.stage1, f_q, exported.act)
    p = exported.used1["logits1"]
    mae_steps = np.abs(dequant(l1_q, p) - net.logits1).mean() / p.scale
    assert mae_steps < 2.0
    assert (l1_q.argmax(1) == net.logits1.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("exported", ["uint8"], indirect=True)
def test_int8_file_is_much_smaller(net: Net, exported: Exported, tmp_path: Path) -> None:
    float_path = tmp_path / "stage1_float.onnx"
    export_float_onnx(net.stage1, float_path)
    ratio = exported.stage1.stat().st_size / float_path.stat().st_size
    assert ratio < 0.4, f"int8 file is {ratio:.0%} of the float file"
    inits = {i.name: i for i in onnx.load(str(exported.stage1)).graph.initializer}
    (weights,) = [i for n, i in inits.items() if "conv3" in n and n.endswith("_quantized")][:1]
    assert weights.data_type == onnx.TensorProto.INT8
    scales = inits[weights.name.replace("_quantized", "_scale")]
    assert list(scales.dims) == [128], "weights are not quantized per output channel"


def test_relu_kept_when_pinned_range_is_signed(net: Net, tmp_path: Path) -> None:
    # A symmetric range for a ReLU output: ORT may not drop the ReLU and clip via the range.
    io = {**net.io0, "features": QuantParams(net.io0["features"].scale, 0, "int8")}
    path = tmp_path / "signed.onnx"
    used = export_int8_onnx(net.stage0, path, net.calib, io_quant=io)
    assert used["features"] == QuantParams(used["features"].scale, 128, "uint8")
    f_q, _ = run(path, net.raw[:32], "uint8")
    assert dequant(f_q, used["features"]).min() >= 0
    assert any(n.op_type == "Relu" for n in onnx.load(str(path)).graph.node)


def test_not_a_keras_model(net: Net, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="tf-keras Model") as err:
        export_int8_onnx(object(), tmp_path / "x.onnx", net.calib, io_quant=net.io0)
    assert "import tf_keras as keras" in (err.value.hint or "")  # how to build one
    with pytest.raises(ConversionError):
        export_float_onnx("model.h5", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"activation_type": "int16"}, "activation_type"),
        ({"io_quant": {"features": INPUT_QUANT}}, "io_quant must give"),
        ({"io_quant": {"input": INPUT_QUANT, "nope": INPUT_QUANT}}, "io_quant must give"),
        ({"calib": np.zeros((4, 8, 8, 1), np.float32)}, "calibration data"),
    ],
)
def test_bad_arguments(net: Net, tmp_path: Path, change: dict[str, Any], match: str) -> None:
    kwargs: dict[str, Any] = {"calib": net.calib, "io_quant": net.io0, **change}
    with pytest.raises(ConversionError, match=match):
        export_int8_onnx(net.stage0, tmp_path / "x.onnx", **kwargs)


def test_merged_constants_are_unshared_and_the_int8_model_opens(tmp_path: Path) -> None:
    """Untrained batch norms and zero biases are equal constants, which TensorFlow merges
    into one initializer read by many nodes; every read gets its own copy, so ORT's
    quantizer never writes two quantized tensors under one name."""
    layers = keras.layers
    inp = keras.Input((8, 8, 4), name="input")
    x = inp
    for i in range(4):
        x = layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(6.0, name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(3, name="logits")(x))
    from edgekit.converters._onnx import _float_model_proto

    graph = _float_model_proto(model, 17).graph
    inits = {i.name for i in graph.initializer}
    reads = [name for n in graph.node for name in n.input if name in inits]
    assert len(reads) == len(set(reads))
    calib = np.random.default_rng(0).random((16, 8, 8, 4), dtype=np.float32)
    path = tmp_path / "q.onnx"
    export_int8_onnx(model, path, calib, io_quant={"input": INPUT_QUANT})
    names = [i.name for i in onnx.load(str(path)).graph.initializer]
    assert len(names) == len(set(names))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": np.zeros((2, 8, 8, 4), np.uint8)})
    assert out.shape == (2, 3)


@pytest.mark.parametrize("first", ["relu", "pool"])
def test_a_stage_starting_with_an_op_ort_keeps_float_gets_8bit_input(
    first: str, tmp_path: Path
) -> None:
    """A tail stage may begin with ReLU or global pooling, which ORT does not quantize."""
    layers = keras.layers
    inp = keras.Input((4, 4, 8), name="input")
    x = layers.ReLU()(inp) if first == "relu" else inp
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(3, name="logits")(x))
    calib = np.random.default_rng(0).normal(size=(32, 4, 4, 8)).astype(np.float32)
    q = tflite_quant(calib)
    path = tmp_path / "tail.onnx"
    used = export_int8_onnx(model, path, calib, io_quant={"input": q}, activation_type="int8")
    assert used["input"] == QuantParams(float(np.float32(q.scale)), q.zero_point, "int8")
    x_q = np.clip(np.round(calib / q.scale) + q.zero_point, -128, 127).astype(np.int8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x_q})
    lq = used["logits"]
    got = (out.astype(np.float32) - lq.zero_point) * lq.scale
    want = model.predict(calib, verbose=0)
    assert np.abs(got - want).max() < 0.1 * (np.abs(want).max() + 1e-3)


def test_grouped_convolutions_export(tmp_path: Path) -> None:
    """tf-keras runs ``groups > 1`` in an XLA function; the export still sees a Conv."""
    layers = keras.layers
    inp = keras.Input((8, 8, 8), name="input")
    x = layers.Conv2D(16, 3, padding="same", groups=4, activation="relu", name="gconv")(inp)
    model = keras.Model(inp, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "g.onnx"
    export_float_onnx(model, path)
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert [a.i for n in convs for a in n.attribute if a.name == "group"] == [4]
    x0 = np.random.default_rng(0).random((2, 8, 8, 8), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x0})[0], model(x0).numpy(), atol=1e-4)
    assert "_jit_compiled_convolution_op" not in vars(model.get_layer("gconv"))
