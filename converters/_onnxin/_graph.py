"""The graph of an ONNX classifier: shapes, MACs per node, and the valid cut points.

A valid cut point is a tensor that every path from the input to the output crosses: the
nodes after it need nothing computed before it, so the graph splits there into two stages
joined by that one tensor (never inside a residual block, never between Concat branches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, require

__all__ = ["GraphInfo", "OnnxCut", "analyse", "pick_cuts", "valid_cuts"]

# Ops ONNX Runtime's static quantizer handles (registry.QDQRegistry | QLinearOpsRegistry): a
# cut tensor must come out of one of them, so its stage can return it as an 8-bit tensor.
_QUANTIZABLE = frozenset(
    {
        *("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv"),
        *("ConvTranspose", "Flatten", "Gemm", "GlobalAveragePool", "LeakyRelu", "MatMul"),
        *("MaxPool", "Mul", "Pad", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Split"),
        *("Squeeze", "Transpose", "Unsqueeze", "Where"),
    }
)
# Ops that only move or pick values: a quantized model runs them on 8-bit data.
_MOVES = frozenset(
    {"Flatten", "MaxPool", "Pad", "Reshape", "Slice", "Split", "Squeeze", "Transpose"}
    | {"Unsqueeze", "Identity"}
)


@dataclass(frozen=True)
class OnnxCut:
    """A valid cut point: ``tensor`` (name in the model), its shape without batch, the MACs
    of everything before it, and that as a fraction of the model's MACs."""

    tensor: str
    shape: tuple[int, ...]
    macs: int
    fraction: float


@dataclass(frozen=True)
class GraphInfo:
    """Shapes (batch 1) of every tensor, MACs per node, total MACs, the valid cuts and the
    op types the quantizer keeps in float."""

    shapes: dict[str, tuple[int, ...]]
    node_macs: tuple[int, ...]
    total_macs: int
    cuts: tuple[OnnxCut, ...]
    float_ops: tuple[str, ...]


def _shapes(proto: Any, input_name: str) -> dict[str, tuple[int, ...]]:
    onnx = require("onnx", "convert", purpose="ONNX intake")
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for vi in m.graph.input:
        if vi.name == input_name:
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_value = 1
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ConversionError(
            f"ONNX shape inference failed on the model: {exc}",
            hint="export again with a recent torch (opset 17) and static image size",
        ) from exc
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in m.graph.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == 2 else (list(a.ints) if a.type == 7 else default)
    return default


def _macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul node (batch 1), else 0."""
    op = node.op_type
    out = shapes.get(node.output[0]) if node.output else None
    if out is None or op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    w = shapes.get(node.input[1])
    if w is None:
        return 0
    if op == "Conv":
        # weight (Cout, Cin/group, k...) : every output element sums Cin/group * k... products
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        x = shapes.get(node.input[0])
        return int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
    if op == "Gemm":
        k = w[1] if _attr(node, "transB", 0) else w[0]
        return int(np.prod(out)) * int(k)
    return int(np.prod(out)) * int(w[-2] if len(w) >= 2 else w[0])


def _dynamic(proto: Any, input_name: str) -> set[str]:
    """Tensors that depend on the graph input."""
    dyn = {input_name}
    for n in proto.graph.node:
        if any(i in dyn for i in n.input):
            dyn.update(o for o in n.output if o)
    return dyn


def _ancestors(nodes: Sequence[Any], target: str) -> set[int]:
    """Indices of the nodes ``target`` depends on."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    seen: set[int] = set()
    todo = [target]
    while todo:
        t = todo.pop()
        i = producer.get(t)
        if i is None or i in seen:
            continue
        seen.add(i)
        todo.extend(x for x in nodes[i].input if x)
    return seen


def _reaches_output_avoiding(
    nodes: Sequence[Any], start: str, output: str, blocked: str, dyn: set[str]
) -> bool:
    reached = {start}
    for n in nodes:  # ONNX nodes are stored in topological order
        if any(i in reached and i != blocked for i in n.input if i in dyn):
            reached.update(o for o in n.output if o and o != blocked)
    return output in reached


def analyse(proto: Any, input_name: str, output: str) -> GraphInfo:
    """Shapes, MACs and valid cut points of a single-input, single-output classifier."""
    shapes = _shapes(proto, input_name)
    nodes = list(proto.graph.node)
    macs = tuple(_macs(n, shapes) for n in nodes)
    total = int(sum(macs))
    if total <= 0:
        raise ConversionError(
            "the model has no Conv, Gemm or MatMul with known shapes: nothing to place exits by",
            hint="export with a static image size (only the batch dimension dynamic)",
        )
    dyn = _dynamic(proto, input_name)
    cuts = []
    for _i, n in enumerate(nodes):
        if n.op_type not in _QUANTIZABLE or len(n.output) != 1:
            continue
        t = n.output[0]
        shape = shapes.get(t)
        if t == output or t not in dyn or shape is None or len(shape) not in (2, 4):
            continue
        if _reaches_output_avoiding(nodes, input_name, output, t, dyn):
            continue
        before = int(sum(macs[j] for j in _ancestors(nodes, t)))
        if 0 < before < total:
            cuts.append(OnnxCut(t, tuple(shape[1:]), before, before / total))
    float_ops = sorted(
        {n.op_type for n in nodes if n.op_type not in _QUANTIZABLE | _MOVES}
        - {"Shape", "Constant", "Gather", "Concat", "Cast"}
    )
    return GraphInfo(shapes, macs, total, tuple(cuts), tuple(float_ops))


def valid_cuts(info: GraphInfo) -> tuple[OnnxCut, ...]:
    """One cut per MACs level: of tensors with the same MACs before them, the smallest
    (then the latest), which is what a stage sends on in split mode."""
    best: dict[int, OnnxCut] = {}
    for c in info.cuts:
        old = best.get(c.macs)
        if old is None or int(np.prod(c.shape)) <= int(np.prod(old.shape)):
            best[c.macs] = c
    return tuple(sorted(best.values(), key=lambda c: c.macs))


def _describe(cuts: Sequence[OnnxCut]) -> str:
    return ", ".join(f"{c.tensor} ({c.fraction:.0%})" for c in cuts) or "none"


def pick_cuts(
    info: GraphInfo,
    *,
    fractions: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    tolerance: float = 0.2,
) -> list[OnnxCut]:
    """Cuts for exits at MAC ``fractions`` (nearest valid cut within ``tolerance``) or at
    tensor ``names``; sorted, distinct. ConversionError lists the valid cuts otherwise."""
    cand = valid_cuts(info)
    if not cand:
        raise ConversionError(
            "the model has no valid cut point: every tensor inside it is bypassed by another "
            "path (one block from input to output)",
            hint="convert it without exits through the Keras path, or export a model with "
            "sequential stages",
        )
    if names:
        by_name = {c.tensor: c for c in info.cuts}
        bad = [n for n in names if n not in by_name]
        if bad:
            raise ConversionError(
                f"{', '.join(map(repr, bad))} {'is' if len(bad) == 1 else 'are'} not valid cut "
                f"points of this model; valid tensors (MACs before): {_describe(cand)}",
                hint="pass --exits with names from this list, or MAC fractions like 0.25,0.5",
            )
        chosen = sorted({by_name[n] for n in names}, key=lambda c: c.macs)
    else:
        fr = list(fractions or ())
        bad_fr = [f for f in fr if not 0 < f < 1]
        if bad_fr or not fr:
            raise ConversionError(
                f"exit fractions must lie strictly between 0 and 1, got {fr}",
                hint="e.g. --exits 0.25,0.5,0.75",
            )
        chosen = []
        for f in sorted(fr):
            c = min(cand, key=lambda c: (abs(c.fraction - f), -c.macs))
            if abs(c.fraction - f) > tolerance:
                raise ConversionError(
                    f"no valid cut point near {f:.0%} of the MACs (nearest: {c.tensor} at "
                    f"{c.fraction:.0%}); valid: {_describe(cand)}",
                    hint="pick fractions near the listed ones, or name tensors with --exits",
                )
            if c not in chosen:
                chosen.append(c)
    return chosen
