"""Graph surgery: the pixel prefix, pooled-feature taps, exit heads, and the stages cut out
of the full multi-exit graph (each a standalone float ONNX model, input ``input``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, require

from ._graph import OnnxCut
from ._load import OnnxSource

__all__ = [
    "Head",
    "cut_name",
    "feature_model",
    "full_model",
    "pool_kernel",
    "stage_model",
]

INPUT = "input"
_MAX_HEAD_DIMS = 1024


@dataclass(frozen=True)
class Head:
    """An exit head: optional average pooling (kernel = stride, ceil mode), flatten, then
    ``relu(x @ w1 + b1) @ w2 + b2``."""

    pool: tuple[int, int] | None
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @property
    def macs(self) -> int:
        return int(self.w1.size + self.w2.size)


def _onnx() -> Any:
    return require("onnx", "convert", purpose="ONNX intake")


def cut_name(k: int) -> str:
    """The name the tensor of cut ``k`` has in edgekit's graphs."""
    return f"ek_cut_{k}"


def pool_kernel(shape: Sequence[int], grid: int = 4) -> tuple[tuple[int, int] | None, int]:
    """AveragePool kernel bringing ``(C, H, W)`` to at most ``grid x grid`` (smaller when the
    flattened size would pass 1024), and the flattened size. ``(C,)`` features: no pool."""
    if len(shape) == 1:
        return None, int(shape[0])
    c, h, w = (int(v) for v in shape)
    for g in range(grid, 0, -1):
        kh, kw = max(1, math.ceil(h / g)), max(1, math.ceil(w / g))
        oh, ow = math.ceil(h / kh), math.ceil(w / kw)
        if c * oh * ow <= _MAX_HEAD_DIMS or g == 1:
            return ((kh, kw) if (kh, kw) != (1, 1) else None), c * oh * ow
    raise AssertionError("unreachable")


def _prefix(src: OnnxSource) -> tuple[list[Any], str]:
    """``input`` (N, H, W, C) in [0, 1] -> the model's own input (normalised, its layout).

    The normalisation is a depthwise 1x1 Conv (weight 1/std, bias -mean/std per channel):
    exact, and quantized to a QLinearConv, several times faster than a broadcast QLinearMul
    and QLinearAdd on the image."""
    helper = _onnx().helper
    nodes = []
    x = INPUT
    normalise = any(m != 0 for m in src.mean) or any(s != 1 for s in src.std)
    if normalise or src.layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [x], ["ek_pre_nchw"], perm=[0, 3, 1, 2]))
        x = "ek_pre_nchw"
    if normalise:
        c = src.image_shape[2]
        nodes.append(
            helper.make_node(
                "Conv",
                [x, "ek_pre_w", "ek_pre_b"],
                ["ek_pre_norm"],
                group=c,
                kernel_shape=[1, 1],
                name="ek_pre_normalise",
            )
        )
        x = "ek_pre_norm"
        if src.layout == "NHWC":
            nodes.append(helper.make_node("Transpose", [x], ["ek_pre_nhwc"], perm=[0, 2, 3, 1]))
            x = "ek_pre_nhwc"
    return nodes, x


def _prefix_inits(src: OnnxSource) -> list[Any]:
    nh = _onnx().numpy_helper
    std, mean = np.asarray(src.std, np.float32), np.asarray(src.mean, np.float32)
    return [
        nh.from_array((1 / std).reshape(-1, 1, 1, 1), "ek_pre_w"),
        nh.from_array(-mean / std, "ek_pre_b"),
    ]


def _rename(nodes: Sequence[Any], mapping: Mapping[str, str]) -> None:
    for n in nodes:
        for seq in (n.input, n.output):
            for i, name in enumerate(seq):
                if name in mapping:
                    seq[i] = mapping[name]


def _vi(name: str, shape: Sequence[int]) -> Any:
    return _onnx().helper.make_tensor_value_info(name, 1, ["batch", *shape])


def _model(
    src: OnnxSource, nodes: Sequence[Any], inits: Sequence[Any], inputs: Any, outputs: Any
) -> Any:
    onnx = _onnx()
    graph = onnx.helper.make_graph(list(nodes), "edgekit", list(inputs), list(outputs), list(inits))
    m = onnx.helper.make_model(graph, opset_imports=list(src.proto.opset_import))
    m.ir_version = src.proto.ir_version
    return m


def _backbone(src: OnnxSource, cuts: Sequence[OnnxCut], output: str) -> tuple[list[Any], list[Any]]:
    """Prefix + the model's nodes; the model input fed by the prefix, its output renamed."""
    onnx = _onnx()
    nodes = []
    for n in src.proto.graph.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        nodes.append(c)
    pre, fed = _prefix(src)
    mapping = {c.tensor: cut_name(k) for k, c in enumerate(cuts)}
    mapping.update({src.input: fed, src.output: output})
    _rename(nodes, mapping)
    inits = list(src.proto.graph.initializer)
    if any(m != 0 for m in src.mean) or any(s != 1 for s in src.std):
        inits += _prefix_inits(src)
    return pre + nodes, inits


def _pool_nodes(k: int, x: str, pool: tuple[int, int] | None, out: str) -> list[Any]:
    helper = _onnx().helper
    nodes = []
    if pool is not None:
        nodes.append(
            helper.make_node(
                "AveragePool",
                [x],
                [f"ek_head{k}_pool"],
                kernel_shape=list(pool),
                strides=list(pool),
                ceil_mode=1,
                count_include_pad=0,
            )
        )
        x = f"ek_head{k}_pool"
    nodes.append(helper.make_node("Flatten", [x], [out], axis=1))
    return nodes


def feature_model(src: OnnxSource, cuts: Sequence[OnnxCut]) -> Any:
    """Float model: ``input`` -> ``pooled_K`` (what head K reads) for every cut, and
    ``logits`` (the model's own output)."""
    nodes, inits = _backbone(src, cuts, "logits")
    outs = []
    for k, c in enumerate(cuts):
        pool, dims = pool_kernel(c.shape)
        nodes += _pool_nodes(k, cut_name(k), pool, f"pooled_{k}")
        outs.append(_vi(f"pooled_{k}", [dims]))
    outs.append(_vi("logits", [src.num_classes]))
    return _model(src, nodes, inits, [_vi(INPUT, src.image_shape)], outs)


def _head_nodes(k: int, head: Head, out: str) -> tuple[list[Any], list[Any]]:
    onnx = _onnx()
    helper, nh = onnx.helper, onnx.numpy_helper
    p = f"ek_head{k}"
    nodes = _pool_nodes(k, cut_name(k), head.pool, f"{p}_flat")
    nodes += [
        helper.make_node("Gemm", [f"{p}_flat", f"{p}_w1", f"{p}_b1"], [f"{p}_hidden"]),
        helper.make_node("Relu", [f"{p}_hidden"], [f"{p}_relu"]),
        helper.make_node("Gemm", [f"{p}_relu", f"{p}_w2", f"{p}_b2"], [out]),
    ]
    inits = [
        nh.from_array(np.asarray(getattr(head, a), np.float32), f"{p}_{a}")
        for a in ("w1", "b1", "w2", "b2")
    ]
    return nodes, inits


def full_model(src: OnnxSource, cuts: Sequence[OnnxCut], heads: Sequence[Head]) -> Any:
    """The float multi-exit model: ``input`` -> ``exit_0 .. exit_n`` (heads, then the model's
    logits); cut tensors are named ``ek_cut_K``."""
    nodes, inits = _backbone(src, cuts, f"exit_{len(heads)}")
    outs = []
    for k, h in enumerate(heads):
        hn, hi = _head_nodes(k, h, f"exit_{k}")
        nodes += hn
        inits += hi
        outs.append(_vi(f"exit_{k}", [src.num_classes]))
    outs.append(_vi(f"exit_{len(heads)}", [src.num_classes]))
    return _model(src, nodes, inits, [_vi(INPUT, src.image_shape)], outs)


def stage_model(src: OnnxSource, full: Any, cuts: Sequence[OnnxCut], k: int) -> Any:
    """Stage ``k`` cut out of ``full``: ``input`` (cut K-1, or the image) ->
    (``ek_features`` = cut K, ``ek_logits`` = exit K); the last stage returns only logits."""
    onnx = _onnx()
    last = k == len(cuts)
    start = INPUT if k == 0 else cut_name(k - 1)
    ends = (
        {f"exit_{k}": "ek_logits"}
        if last
        else {cut_name(k): "ek_features", f"exit_{k}": "ek_logits"}
    )
    graph = full.graph
    producer = {o: n for n in graph.node for o in n.output}
    needed: list[Any] = []
    seen: set[int] = set()
    todo = list(ends)
    inits = {t.name: t for t in graph.initializer}
    while todo:
        t = todo.pop()
        if t == start or t in inits:
            continue
        n = producer.get(t)
        if n is None:
            if t:
                raise ConversionError(
                    f"stage {k} needs tensor {t!r}, computed before its input",
                    hint="this cut point is not valid; report it with the model",
                )
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        needed.append(n)
        todo.extend(n.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    nodes = []
    for n in sorted(needed, key=lambda n: order[id(n)]):
        c = onnx.NodeProto()
        c.CopyFrom(n)
        nodes.append(c)
    mapping = {start: INPUT, **ends}
    _rename(nodes, mapping)
    used = {i for n in nodes for i in n.input}
    shape_in = src.image_shape if k == 0 else cuts[k - 1].shape
    outs = [
        _vi(new, cuts[k].shape if new == "ek_features" else [src.num_classes])
        for new in ends.values()
    ]
    # ek_features goes first, as the runtime reads (features, logits)
    outs.sort(key=lambda v: v.name != "ek_features")
    return _model(
        src, nodes, [inits[i] for i in sorted(used) if i in inits], [_vi(INPUT, shape_in)], outs
    )
