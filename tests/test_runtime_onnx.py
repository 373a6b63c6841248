"""The onnxruntime backend's per-call path, and stage averages that ignore scheduler waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.runtime import backends
from edgekit.runtime.backends.onnxruntime import OnnxFull, OnnxStage


def _model(path: Path, outputs: list[str], input_name: str = "input") -> Path:
    """A uint8 graph: each output is the input plus its index (so outputs differ)."""
    nodes, consts = [], []
    for i, name in enumerate(outputs):
        consts.append(helper.make_tensor(f"c{i}", TensorProto.UINT8, [], [i]))
        nodes.append(helper.make_node("Add", [input_name, f"c{i}"], [name]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", 4])],
        [helper.make_tensor_value_info(o, TensorProto.UINT8, ["batch", 4]) for o in outputs],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def test_stage_and_unsplit_answers_on_cpu(tmp_path: Path) -> None:
    be = backends.get("onnxruntime")
    stage = be.open_stage(_model(tmp_path / "s.onnx", ["ek_features", "ek_logits"]), 1)
    last = be.open_stage(_model(tmp_path / "l.onnx", ["ek_logits"]), 1)
    full = be.open_full(_model(tmp_path / "f.onnx", ["exit_0", "exit_1"]), 2, 1)
    assert full is not None
    for n in (1, 3):  # one input, and a batch
        x = np.arange(4 * n, dtype=np.uint8).reshape(n, 4)
        feats, logits = stage(x)
        assert feats is not None
        np.testing.assert_array_equal(feats, x)
        np.testing.assert_array_equal(logits, x + 1)
        f2, l2 = last(x)
        assert f2 is None
        np.testing.assert_array_equal(l2, x)
        e0, e1 = full(x)
        np.testing.assert_array_equal(e0, x)
        np.testing.assert_array_equal(e1, x + 1)
        np.testing.assert_array_equal(full.final(x), x + 1)


class _Info:
    def __init__(self, name: str, type_: str = "tensor(uint8)") -> None:
        self.name, self.type = name, type_


class _Compiled:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def run(self, names: list[str], feed: dict[str, Any], options: Any) -> list[np.ndarray]:
        self.calls.append("compiled")
        return [feed["input"] for _ in names]


class _Session:
    """What OnnxStage reads of an InferenceSession; records which run was called."""

    def __init__(self, providers: list[str], inputs: tuple[str, ...] = ("input",)) -> None:
        self.calls: list[str] = []
        self._providers = providers
        self._inputs = [_Info(n) for n in inputs]
        self._sess = _Compiled(self.calls)

    def get_inputs(self) -> list[_Info]:
        return self._inputs

    def get_outputs(self) -> list[_Info]:
        return [_Info("ek_features"), _Info("ek_logits")]

    def get_providers(self) -> list[str]:
        return self._providers

    def run(self, names: list[str], feed: dict[str, Any], options: Any = None) -> list[np.ndarray]:
        self.calls.append("public")
        return [feed["input"] for _ in names]


@pytest.mark.parametrize(
    ("providers", "inputs", "expected"),
    [
        (["CPUExecutionProvider"], ("input",), "compiled"),
        # a GPU provider keeps the public run, which falls back to the CPU on EP errors
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ("input",), "public"),
        (["TensorrtExecutionProvider", "CPUExecutionProvider"], ("input",), "public"),
        # a graph whose feed this runner does not build is left to the checking run
        (["CPUExecutionProvider"], ("x",), "public"),
        (["CPUExecutionProvider"], ("input", "extra"), "public"),
    ],
)
def test_the_compiled_session_is_called_only_where_nothing_is_skipped(
    providers: list[str], inputs: tuple[str, ...], expected: str
) -> None:
    sess = _Session(providers, inputs)
    x = np.zeros((1, 4), np.uint8)
    OnnxStage(sess)(x)
    OnnxFull(sess, 2)(x)
    assert sess.calls == [expected, expected]


def test_a_session_without_the_compiled_handle_uses_the_public_run() -> None:
    sess = _Session(["CPUExecutionProvider"])
    del sess._sess
    OnnxStage(sess)(np.zeros((1, 4), np.uint8))
    assert sess.calls == ["public"]


def test_stage_average_caps_a_scheduler_wait_but_follows_a_lasting_slowdown() -> None:
    from edgekit.runtime._stats import Stats  # internal: the averages alone, no package

    st = Stats(1, [1.0])

    def run(seconds: float) -> None:
        st.marks[0] = 10.0 + seconds
        st.record(10.0, 0, 0, "latency")

    for _ in range(50):
        run(1e-4)
    assert st.ema[0] == pytest.approx(1e-4)
    run(8e-3)  # one input waited 8 ms for a CPU
    assert st.ema[0] == pytest.approx(1e-4 * 1.15)  # counted as 4x: +15%, not +400%
    for _ in range(200):
        run(1e-3)  # the stage really became 10x slower
    assert st.ema[0] == pytest.approx(1e-3, rel=0.01)
