"""Per-node execution-provider report (issue 13), on a real ORT session with the CPU provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit import ConversionError
from edgekit._package import QuantParams  # internal: a stage's int8 scale and zero point
from edgekit.converters._onnx import quantize_qdq  # internal: the QDQ pass, below convert
from edgekit.converters._providers import (  # internal: the provider report
    node_providers,
    provider_summary,
)

onnx = pytest.importorskip("onnx")


def _float_graph() -> object:
    h = onnx.helper
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"], name="relu"),
        h.make_node("GlobalAveragePool", ["r"], ["out"], name="gap"),
    ]
    g = h.make_graph(
        nodes,
        "tiny",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_every_node_of_a_float_graph_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "f.onnx"
    onnx.save(_float_graph(), str(p))
    nodes = node_providers(p)
    assert "gap" in nodes  # names as ORT runs them, after fusing (Conv+Relu: r_nchwc)
    assert set(nodes.values()) == {"CPUExecutionProvider"}
    assert provider_summary(nodes) == {"CPUExecutionProvider": len(nodes)}


def test_an_int8_qdq_graph_is_reported(tmp_path: Path) -> None:
    calib = np.random.default_rng(1).normal(size=(8, 3, 8, 8)).astype(np.float32)
    q = quantize_qdq(
        _float_graph(),
        calib,
        pinned={"input": QuantParams(4.0 / 127, 0, "int8")},
        activation_type="int8",
        purpose="test",
        hint="",
    )
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    p = tmp_path / "q.onnx"
    onnx.save(q, str(p))
    nodes = node_providers(p)
    assert nodes and set(nodes.values()) == {"CPUExecutionProvider"}


def test_a_broken_file_gets_a_conversion_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"not an onnx file")
    with pytest.raises(ConversionError, match=r"could not profile bad\.onnx"):
        node_providers(p)


def test_convert_reports_the_provider_of_each_stage_node(digits_ptq_pkg: Path) -> None:
    import json

    report = json.loads((digits_ptq_pkg / "report.json").read_text())
    files = sorted(p.name for p in (digits_ptq_pkg / "onnx").glob("stage_*.onnx"))
    got = report["onnx_providers"]
    assert sorted(got) == files
    for counts in got.values():
        assert counts.get("CPUExecutionProvider", 0) > 0
