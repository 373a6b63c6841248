"""ONNX intake: PyTorch exports (real files from torch.onnx.export) in, ordinary edge packages
out, checked with the real onnxruntime. Fixtures: tests/fixtures/torch (or $EDGEKIT_TORCH_MODELS)
and tests/fixtures/onnx (made by tests/fixtures/onnx/make_fixtures.py)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import edgekit  # noqa: E402
from edgekit import ConversionError, read_manifest  # noqa: E402
from edgekit._package import QuantParams  # noqa: E402  # internal: the stage quantization type
from edgekit.converters import convert  # noqa: E402
from edgekit.converters._onnxin import load_onnx, valid_cuts  # noqa: E402  # internal: ONNX intake
from edgekit.converters._onnxin._graph import analyse, pick_cuts  # noqa: E402  # internal: ONNX cuts
from edgekit.data import Dataset, load_fashion_mnist  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
SHARED = Path(os.environ.get("EDGEKIT_TORCH_MODELS", Path(__file__).parent / "fixtures" / "torch"))
VGG = SHARED / "fmnist_vgg_legacy.onnx"
VGG_DYNAMO = SHARED / "fmnist_vgg_dynamo.onnx"
SQUEEZENET = SHARED / "squeezenet1_1.onnx"
RESNET = FIXTURES / "fmnist_resnet_nhwc.onnx"
MOBILENET = FIXTURES / "mobilenet_v3_small.onnx"
MEAN, STD = (0.286,), (0.353,)


@pytest.fixture(scope="module", autouse=True)
def _feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Backbone features are cached per model and images: in a fresh folder here."""
    old = os.environ.get("EDGEKIT_CACHE")
    os.environ["EDGEKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("EDGEKIT_CACHE", None)
    else:
        os.environ["EDGEKIT_CACHE"] = old


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:  # committed under tests/fixtures/torch: missing means a broken checkout
        pytest.fail(f"fixture models missing: {missing}")


def _fmnist(n_train: int, n_test: int) -> Dataset:
    try:
        return load_fashion_mnist().limit(n_train, n_test)
    except Exception as exc:  # the Debian package is not installed
        pytest.skip(f"Fashion-MNIST not available: {exc}")


# -- tiny hand-built graphs for the bad-input cases -------------------------------------------

H = onnx.helper
F32 = onnx.TensorProto.FLOAT


def _conv(name: str, x: str, cin: int, cout: int, rng: np.random.Generator) -> tuple:
    w = onnx.numpy_helper.from_array(
        rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), f"{name}_w"
    )
    return H.make_node("Conv", [x, w.name], [name], pads=[1, 1, 1, 1]), w


def _save(
    tmp: Path, nodes: list, inits: list, inputs: list, outputs: list, opset: int = 17
) -> Path:
    g = H.make_graph(nodes, "t", inputs, outputs, inits)
    m = H.make_model(g, opset_imports=[H.make_opsetid("", opset)])
    p = tmp / "m.onnx"
    onnx.save(m, str(p))
    return p


def _classifier(
    tmp: Path, *, residual_only: bool = False, opset: int = 17, meta: dict | None = None
) -> Path:
    """input (N,3,8,8) -> conv -> relu -> conv -> relu [-> + input] -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    c1, w1 = _conv("c1", "input", 3, 3, rng)
    c2, w2 = _conv("c2", "r1", 3, 3, rng)
    nodes = [c1, H.make_node("Relu", ["c1"], ["r1"]), c2, H.make_node("Relu", ["c2"], ["r2"])]
    last = "r2"
    if residual_only:
        nodes.append(H.make_node("Add", ["r2", "input"], ["sum"]))
        last = "sum"
    wf = onnx.numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc_w")
    nodes += [
        H.make_node("GlobalAveragePool", [last], ["gap"]),
        H.make_node("Flatten", ["gap"], ["flat"]),
        H.make_node("Gemm", ["flat", "fc_w"], ["logits"]),
    ]
    inp = H.make_tensor_value_info("input", F32, ["batch", 3, 8, 8])
    out = H.make_tensor_value_info("logits", F32, ["batch", 4])
    p = _save(tmp, nodes, [w1, w2, wf], [inp], [out], opset)
    if meta:
        m = onnx.load(str(p))
        H.set_model_props(m, meta)
        onnx.save(m, str(p))
    return p


def test_not_onnx(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    p.write_bytes(b"PK\x03\x04 this is a zip, not a protobuf" * 10)
    with pytest.raises(ConversionError, match="is not an ONNX model") as e:
        load_onnx(p)
    assert "torch.onnx.export" in (e.value.hint or "")
    with pytest.raises(ConversionError, match="does not exist"):
        load_onnx(tmp_path / "nope.onnx")


def test_several_inputs_refused(tmp_path: Path) -> None:
    a = H.make_tensor_value_info("image", F32, ["n", 3, 8, 8])
    b = H.make_tensor_value_info("mask", F32, ["n", 3, 8, 8])
    o = H.make_tensor_value_info("y", F32, ["n", 3, 8, 8])
    p = _save(tmp_path, [H.make_node("Add", ["image", "mask"], ["y"])], [], [a, b], [o])
    with pytest.raises(ConversionError, match=r"2 inputs \(image, mask\)"):
        load_onnx(p)


def test_non_classifier_output_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    c1, w1 = _conv("boxes", "input", 3, 4, rng)
    inp = H.make_tensor_value_info("input", F32, ["n", 3, 8, 8])
    out = H.make_tensor_value_info("boxes", F32, ["n", 4, 8, 8])
    p = _save(tmp_path, [c1], [w1], [inp], [out])
    with pytest.raises(ConversionError, match=r"not boxes or sequences"):
        load_onnx(p)


def test_old_opset_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="opset 11") as e:
        load_onnx(_classifier(tmp_path, opset=11))
    assert "opset_version=17" in (e.value.hint or "")


def test_newer_ir_version_lowered_for_onnxruntime(tmp_path: Path) -> None:
    path = _classifier(tmp_path)
    proto = onnx.load(str(path))
    proto.ir_version = 99  # newer than any onnxruntime reads
    onnx.save(proto, str(path))
    src = load_onnx(path)
    assert src.proto.ir_version < 99
    assert any(f"IR version 99 lowered to {src.proto.ir_version}" in n for n in src.notes)


def test_missing_external_data(tmp_path: Path) -> None:
    _need(VGG_DYNAMO)
    shutil.copy(VGG_DYNAMO, tmp_path / VGG_DYNAMO.name)
    with pytest.raises(ConversionError, match="external data file") as e:
        load_onnx(tmp_path / VGG_DYNAMO.name)
    assert "fmnist_vgg_dynamo.onnx.data" in str(e.value)
    shutil.copy(str(VGG_DYNAMO) + ".data", tmp_path)
    assert load_onnx(tmp_path / VGG_DYNAMO.name).num_classes == 10


def test_no_valid_cut_point(tmp_path: Path) -> None:
    src = load_onnx(_classifier(tmp_path, residual_only=True))
    info = analyse(src.proto, src.input, src.output)
    # the Add joins the input back in: only tensors after it are crossed by every path
    assert all(c.tensor in ("sum", "gap", "flat") for c in info.cuts)
    with pytest.raises(ConversionError, match="no valid cut point near 25%"):
        pick_cuts(info, fractions=[0.25])


def test_metadata_props_give_normalisation(tmp_path: Path) -> None:
    p = _classifier(tmp_path, meta={"mean": "0.485,0.456,0.406", "std": "[0.229, 0.224, 0.225]"})
    src = load_onnx(p)
    assert src.mean == (0.485, 0.456, 0.406) and src.std == (0.229, 0.224, 0.225)
    assert any("metadata_props" in n for n in src.notes)
    assert load_onnx(p, mean=(0.5,), std=(0.25,)).mean == (0.5, 0.5, 0.5)  # options win
    with pytest.raises(ConversionError, match="2 values but the model input has 3 channels"):
        load_onnx(p, mean=(0.1, 0.2))


def test_vgg_export_read() -> None:
    _need(VGG, VGG_DYNAMO)
    for path in (VGG, VGG_DYNAMO):
        src = load_onnx(path, mean=MEAN, std=STD)
        assert src.softmax_removed and src.layout == "NCHW" and src.image_shape == (28, 28, 1)
        info = analyse(src.proto, src.input, src.output)
        # 3x3 convs 1-32-32 @28, 32-64-64 @14, 64-128-128 @7, then Linear 128-10
        want = 784 * 9 * (32 + 32 * 32) + 196 * 9 * (32 * 64 + 64 * 64)
        want += 49 * 9 * (64 * 128 + 128 * 128) + 1280
        assert info.total_macs == want


def test_residual_cuts_only_between_blocks() -> None:
    _need(RESNET)
    src = load_onnx(RESNET)
    assert src.layout == "NHWC" and src.image_shape == (28, 28, 1)
    info = analyse(src.proto, src.input, src.output)
    names = [c.tensor for c in valid_cuts(info)]
    # the stem, the output of each BasicBlock (after its Add + ReLU), then the pooled features
    assert names[0] == "/stem/stem.2/Relu_output_0"
    blocks = [n for n in names if n.startswith("/blocks/")]
    assert blocks == [f"/blocks/blocks.{i}/Relu_1_output_0" for i in range(3)]
    # inside a block: everything but the Add joining the shortcut and the ReLU after it
    inside = {
        n.output[0]
        for n in src.proto.graph.node
        if "/blocks/" in n.name and n.op_type != "Add" and not n.name.endswith("Relu_1")
    }
    assert len(inside) >= 3 * 4  # conv, relu, conv per block (and 1x1 shortcut convs)
    assert not inside & {c.tensor for c in info.cuts}
    with pytest.raises(ConversionError, match="not valid cut points") as e:
        pick_cuts(info, names=["/blocks/blocks.1/Relu_output_0"])
    assert "/blocks/blocks.0/Relu_1_output_0" in str(e.value)  # the valid ones are listed


def test_squeezenet_never_between_concat_branches() -> None:
    _need(SQUEEZENET)
    src = load_onnx(SQUEEZENET)
    info = analyse(src.proto, src.input, src.output)
    concat_inputs = {i for n in src.proto.graph.node if n.op_type == "Concat" for i in n.input}
    cut_names = {c.tensor for c in info.cuts}
    assert not concat_inputs & cut_names
    assert sum("Concat" in c for c in cut_names) >= 6  # after each Fire module


def test_mobilenet_v3_se_and_hardswish() -> None:
    _need(MOBILENET)
    src = load_onnx(MOBILENET)
    assert src.opset == 21 and src.softmax_removed
    info = analyse(src.proto, src.input, src.output)
    assert {"HardSwish", "HardSigmoid"} <= set(info.float_ops)
    # no cut inside a squeeze-excite branch: pooled to 1x1, two 1x1 convs, the gate, the Mul
    nodes = src.proto.graph.node
    gates = {n.output[0] for n in nodes if n.op_type == "HardSigmoid"}
    pooled = {n.output[0] for n in nodes if n.op_type == "ReduceMean"}
    squeezed = {n.output[0] for n in nodes if n.op_type == "Conv" and n.input[0] in pooled}
    cuts = {c.tensor for c in info.cuts}
    assert len(gates) == 9 and len(squeezed) == 9
    assert not (gates | squeezed) & cuts
    assert all(c.shape[-1] > 1 for c in info.cuts if len(c.shape) == 3)
    assert len(pick_cuts(info, fractions=[0.25, 0.5, 0.75])) == 3


# -- conversions (onnxruntime features, numpy heads, QDQ quantization) -----------------------


@pytest.fixture(scope="module")
def vgg_pkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    _need(VGG)
    data = _fmnist(3000, 600)
    out = tmp_path_factory.mktemp("onnxin") / "vgg.edgepkg"
    convert(data, out, model=str(VGG), mean=MEAN, std=STD, fast=True, epochs=3, verbose=False)
    yield out


@pytest.mark.slow
def test_vgg_package(vgg_pkg: Path) -> None:
    m = read_manifest(vgg_pkg)
    report = __import__("json").loads((vgg_pkg / "report.json").read_text())
    assert m.formats == ("onnx",) and len(m.exits) == 4 and m.quantization == "ptq"
    assert m.input.mean == MEAN and m.input.std == STD and m.input.layout == "NHWC"
    fr = [e.macs_fraction for e in m.exits]
    assert fr == sorted(fr) and fr[0] <= 0.3 and fr[-1] == 1.0
    # the stage contract: stage K's features are stage K+1's input, same scale/zero point
    for a, b in zip(m.stages, m.stages[1:]):
        assert a.features is not None and a.features.quant == b.input.quant
        assert a.features.shape == b.input.shape
    assert report["agreement"]["onnx_chain_vs_unsplit"] >= 0.99
    final = report["exits"][-1]["accuracy"]
    assert final["float"] > 0.85 and abs(final["onnx_int8"] - final["float"]) < 0.02
    assert report["exits"][0]["accuracy"]["onnx_int8"] > 0.6
    assert any("ONNX-only" in n for n in report["notes"])
    assert (vgg_pkg / "plots" / "accuracy_cost.png").is_file()
    assert report["sizes"]["onnx"]["int8_unsplit"] < report["sizes"]["onnx"]["float"] / 3
    # stage 0 reads the pixels through the normalising input grid (no normalisation Conv),
    # and the heads pool in float (no QLinearAveragePool) before their INT8 QGemm
    for k in range(len(m.stages)):
        g = onnx.load(str(vgg_pkg / "onnx" / f"stage_{k}.onnx")).graph
        users = {i: n.op_type for n in g.node for i in n.input}
        assert "ek_pre_normalise" not in {n.name for n in g.node}
        pools = [n.output[0] for n in g.node if n.op_type == "AveragePool"]
        assert (len(pools) == 1) is (k < len(m.stages) - 1)  # the last stage has no head
        assert all(users[p] == "Flatten" for p in pools)
    # the first conv was timed both ways; where it runs in float, stage 0 reads its input
    # through a Cast and the input grid is in the file's metadata, the same as the manifest's
    (stem,) = report["float_stem"]
    assert stem["format"] == "onnx" and stem["layer"].startswith("Conv 3x3, 1 -> ")
    assert stem["int8_us"] > 0 and stem["float_us"] > 0 and stem["agreement"] >= 0.99
    for name in ("stage_0.onnx", "full.onnx"):
        g = onnx.load(str(vgg_pkg / "onnx" / name)).graph
        readers = [n.op_type for n in g.node if "input" in n.input]
        assert readers == (["Cast"] if stem["used"] else ["DequantizeLinear"])


@pytest.mark.slow
def test_features_cached(vgg_pkg: Path) -> None:
    from edgekit.converters._onnxin._heads import cache_dir  # internal: the feature cache's folder

    files = list(cache_dir().glob("*.npz"))
    assert len(files) == 3  # train, val, test of the vgg conversion
    with np.load(files[0]) as z:
        assert {"logits", "pooled_0", "pooled_1", "pooled_2"} == set(z.files)
        assert z["pooled_0"].dtype == np.float16


@pytest.mark.slow
def test_vgg_package_predicts_uint8_images(vgg_pkg: Path) -> None:
    data = _fmnist(3000, 600)
    x = np.round(data.x_test[:100, ..., 0] * 255).astype(np.uint8)  # (28, 28) uint8 pixels
    with edgekit.load(vgg_pkg, policy="full") as m:
        assert m.backend == "onnxruntime"
        labels = [m.predict(img).label for img in x]
    assert np.mean(np.array(labels) == data.y_test[:100]) > 0.85


@pytest.mark.slow
def test_vgg_tail_served(vgg_pkg: Path) -> None:
    from _serving import Client, Local

    from edgekit._kserve import encode_split_request  # internal: the KServe v2 codec
    from edgekit.serve import ServeConfig, Server

    data = _fmnist(3000, 600)
    local = Local(vgg_pkg)
    x = local.features(data.x_test[:32], 2)
    scale, zp = local.input_quant(2)
    with Server(vgg_pkg, ServeConfig(port=0)) as srv:
        c = Client(srv.url)
        try:
            out = c.infer("vgg-split2", *encode_split_request(x, scale=scale, zero_point=zp))
        finally:
            c.close()
    np.testing.assert_array_equal(out["logits"], local.tail(x, 2))


@pytest.mark.slow
def test_dynamo_export_with_external_data(vgg_pkg: Path, tmp_path: Path) -> None:
    """The same network through the dynamo exporter (opset 18, .onnx.data beside it)."""
    _need(VGG_DYNAMO)
    data = _fmnist(3000, 600)
    want = [e.macs_fraction for e in read_manifest(vgg_pkg).exits]
    res = convert(
        data,
        tmp_path / "dyn.edgepkg",
        model=str(VGG_DYNAMO),
        mean=MEAN,
        std=STD,
        fast=True,
        epochs=1,
        verbose=False,
    )
    legacy = __import__("json").loads((vgg_pkg / "report.json").read_text())
    assert res.report["model"]["opset"] == 18 and len(res.manifest.exits) == 4
    assert [e.layer for e in res.manifest.exits[:-1]] == ["max_pool2d", "relu_2", "relu_4"]
    assert [e.macs_fraction for e in res.manifest.exits] == pytest.approx(want)
    # same weights: the model's own accuracy is the legacy export's
    assert res.report["model"]["float_accuracy"] == legacy["model"]["float_accuracy"]
    assert any("ReduceMean" in n for n in res.report["notes"])
    assert res.report["agreement"]["onnx_chain_vs_unsplit"] >= 0.99


@pytest.mark.slow
def test_label_free_resnet_nhwc(tmp_path: Path) -> None:
    """--labels none ships heads distilled from the model; --labels both ships labelled heads
    and reports the label-free ones' accuracy beside theirs: the very heads --labels none
    trains (same features, seeds and quantization), so the figures are those of that run."""
    _need(RESNET)
    data = _fmnist(2000, 400)
    kw = dict(model=str(RESNET), mean=MEAN, std=STD, fast=True, epochs=2, verbose=False)
    res = convert(data, tmp_path / "res.edgepkg", labels="none", **kw)
    r = res.report
    assert r["training"]["labels"] == "none" and r["model"]["layout"] == "NHWC"
    assert any("label-free" in n for n in r["notes"])
    assert [e["layer"] for e in r["exits"][:-1]] == [
        f"/blocks/blocks.{i}/Relu_1_output_0" for i in range(3)
    ]
    assert r["exits"][-1]["accuracy"]["onnx_int8"] > 0.85
    assert r["agreement"]["onnx_chain_vs_unsplit"] >= 0.99

    both = convert(data, tmp_path / "both.edgepkg", labels="both", **kw)
    b = both.report
    assert b["training"]["labels"] == "dataset+label-free"
    for eb, en in zip(b["exits"], r["exits"], strict=True):
        acc_b, acc_n = eb["accuracy"], en["accuracy"]
        assert acc_b["float_label_free"] == acc_n["float"]
        assert acc_b["onnx_int8_label_free"] == acc_n["onnx_int8_unsplit"]
        assert {"float", "onnx_int8"} <= set(acc_b)  # the labelled heads' own figures
    final = b["exits"][-1]["accuracy"]
    note = next(n for n in b["notes"] if n.startswith("--labels both"))
    assert f"{final['onnx_int8']:.2%} labelled, {final['onnx_int8_label_free']:.2%} label-free" in (
        note
    )
    # the package holds the labelled heads only; report.md shows both side by side
    assert (
        read_manifest(both.path).exits[0].accuracy["onnx_int8"]
        == b["exits"][0]["accuracy"]["onnx_int8"]
    )
    assert "ONNX INT8, label-free heads" in (both.path / "report.md").read_text()
    assert not list(both.path.rglob("*label_free*"))
    with pytest.raises(ConversionError, match="labels must be one of auto, none, both"):
        convert(data, tmp_path / "bad.edgepkg", labels="some", **kw)

    # stage rows: the manifest's int8 contract next to what each ONNX file's input really is
    from edgekit.converters._onnx import read_io_quant  # internal: reads the file's 8-bit I/O

    act = b["onnx_activation_type"]
    assert act == read_manifest(both.path).onnx_activation_type
    for k, row in enumerate(b["stages"]):
        in_file = read_io_quant(both.path / "onnx" / f"stage_{k}.onnx")["input"]
        assert in_file.dtype == act and row["onnx_input_quant"] == dataclasses.asdict(in_file)
        assert row["input_quant"]["dtype"] == "int8"
        assert in_file.as_dtype("int8") == QuantParams(**row["input_quant"])


@pytest.mark.slow
def test_squeezenet_from_image_folder(tmp_path: Path) -> None:
    _need(SQUEEZENET)
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(24):
            img = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
            img[..., k] += 150
            pil.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
    res = convert(
        f"folder:{tmp_path / 'imgs'}",
        tmp_path / "sq.edgepkg",
        model=str(SQUEEZENET),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        exits=(0.25, 0.5),
        quant="ptq",
        epochs=3,
        verbose=False,
    )
    m = res.manifest
    assert m.labels == ("blue", "green", "red") and len(m.stages) == 3
    assert all("Concat" in e.layer for e in m.exits[:-1])
    assert res.report["agreement"]["onnx_chain_vs_unsplit"] >= 0.95


@pytest.mark.slow
def test_mobilenet_v3_converts(tmp_path: Path) -> None:
    _need(MOBILENET)
    rng = np.random.default_rng(0)
    x = rng.random((240, 64, 64, 3), dtype=np.float32)
    y = np.arange(240) % 3
    np.savez(tmp_path / "d.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    res = convert(
        str(tmp_path / "d.npz"),
        tmp_path / "mnv3.edgepkg",
        model=str(MOBILENET),
        labels="none",
        epochs=2,
        verbose=False,
    )
    assert len(res.manifest.stages) == 4
    assert any("HardSwish" in n for n in res.report["notes"])
    with edgekit.load(res.path, policy="full") as m:
        p = m.predict((x[0] * 255).astype(np.uint8))
    assert 0 <= p.label < 3 and p.name == res.manifest.labels[p.label]


def test_wrong_image_size_is_a_dataset_error(tmp_path: Path) -> None:
    _need(VGG)
    from edgekit import DatasetError

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.random((40, 32, 32, 1), dtype=np.float32),
        y_train=np.arange(40) % 10,
        x_test=rng.random((20, 32, 32, 1), dtype=np.float32),
        y_test=np.arange(20) % 10,
    )
    with pytest.raises(DatasetError, match="28x28 with 1 channel"):
        convert(str(tmp_path / "d.npz"), tmp_path / "x.edgepkg", model=str(VGG), verbose=False)
    assert not (tmp_path / "x.edgepkg").exists()


def test_cli_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00not onnx at all" * 64)
    cmd = [sys.executable, "-m", "edgekit", "convert", "--model", str(bad), "--dataset", "digits"]
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "x.edgepkg")], capture_output=True, text=True, timeout=600
    )
    assert r.returncode != 0 and "is not an ONNX model" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.edgepkg").exists()
    r = subprocess.run(
        [*cmd, "--mean", "half", "--out", str(tmp_path / "y.edgepkg")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2 and "not a number or comma-separated numbers" in r.stderr


def test_feature_cache_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.converters._onnxin._heads import _prune  # internal: the feature cache's bound

    for i in range(5):
        (tmp_path / f"{i}.npz").write_bytes(b"x" * 400_000)
        os.utime(tmp_path / f"{i}.npz", (1000 + i, 1000 + i))
    monkeypatch.setenv("EDGEKIT_CACHE_MAX_MB", "1")
    _prune(tmp_path, keep=tmp_path / "0.npz")  # the entry just written always stays
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["0.npz", "3.npz", "4.npz"]


@pytest.mark.parametrize(
    ("mean", "std"),
    [((0.5,), (0.25,)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
    ids=["same-per-channel", "per-channel"],
)
def test_input_normalisation_folded_into_the_input_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mean: tuple, std: tuple
) -> None:
    """One mean and std for all channels: the INT8 file dequantizes its 8-bit input (still
    the pixels, as the manifest says) straight to normalised values, no normalisation Conv,
    and answers as the unfolded file does; per-channel values keep the Conv."""
    import onnxruntime as ort

    from edgekit.converters import _onnx as ox  # internal: the file's 8-bit I/O
    from edgekit.converters._onnxin import _quant  # internal: the stage quantizer
    from edgekit.converters._onnxin._build import full_model  # internal: the float graph
    from edgekit.converters._onnxin._intake import PIXEL_QUANT  # internal: the pixel grid
    from edgekit.runtime.backends.onnxruntime import session_options

    folded = len(set(mean)) == 1
    path = _classifier(tmp_path)
    proto = onnx.load(str(path))
    proto.ir_version = 8  # what the exporters write; onnx's newest is past onnxruntime's
    onnx.save(proto, str(path))
    src = load_onnx(path, mean=mean, std=std, layout="NCHW")
    graph = full_model(src, [], [])
    rng = np.random.default_rng(1)
    calib = rng.integers(0, 256, (64, 8, 8, 3)).astype(np.float32) / 255
    pinned = {"input": PIXEL_QUANT}
    kw = dict(pinned=pinned, activation_type="uint8", what="test")
    _quant.quantize_graph(graph, tmp_path / "fold.onnx", calib, **kw)
    monkeypatch.setattr(_quant, "fold_input_normalisation", lambda proto: False)
    _quant.quantize_graph(graph, tmp_path / "plain.onnx", calib, **kw)

    m = onnx.load(str(tmp_path / "fold.onnx"))
    convs = [n.name for n in m.graph.node if n.op_type == "Conv"]
    assert ("ek_pre_normalise" in convs) is not folded
    assert any(p.key == "edgekit.input_pixel_grid" for p in m.metadata_props) is folded
    grid = ox.read_io_quant(tmp_path / "plain.onnx")["input"]  # the pixel grid, in float32
    assert grid.zero_point == PIXEL_QUANT.as_dtype("uint8").zero_point
    assert ox.read_io_quant(tmp_path / "fold.onnx")["input"] == grid  # what the runtime feeds

    x = rng.integers(0, 256, (200, 8, 8, 3)).astype(np.uint8)
    outs = []
    for name in ("fold", "plain"):
        # The runtime's options: ORT's default U8S8 kernels saturate on x86 without VNNI.
        s = ort.InferenceSession(
            str(tmp_path / f"{name}.onnx"), session_options(), providers=["CPUExecutionProvider"]
        )
        outs.append(s.run(None, {"input": x})[0].astype(int))
    fold, plain = outs
    assert np.abs(fold - plain).max() <= 2  # output quanta: rounding in other places only
    assert np.mean(fold.argmax(1) == plain.argmax(1)) >= 0.95
    # and both are the float model's answer on the same pixels
    so = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    want = so.run(None, {"input": x.astype(np.float32) / 255})[0]
    q = ox.read_io_quant(tmp_path / "fold.onnx")[next(iter(o.name for o in m.graph.output))]
    got = (fold - q.zero_point) * q.scale
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
