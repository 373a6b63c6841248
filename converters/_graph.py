"""Static analysis of a Keras Functional model: MACs per layer and where it can be cut."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgekit._errors import ModelError

__all__ = [
    "CutPoint",
    "cut_points",
    "describe_cut_points",
    "layer_macs",
    "model_macs",
    "pick_cuts",
]

# Convolutions whose output is a stage boundary only when nothing is folded into them after:
# no batch norm, no separate activation layer (the converters fuse those into the conv).
_CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv1D")
_FOLDED = ("BatchNormalization", "ReLU", "Activation", "LeakyReLU", "ELU", "PReLU")
# A cut after padding would leave the pad in one stage and its conv in the next.
_UNCUTTABLE = ("Dense", "ZeroPadding2D")
_ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU", "ELU")
# Exits placed by MAC fraction stay below this share of the model's MACs, and this far
# apart: two exits a pooling layer apart cost twice for one chance to stop.
MAX_EXIT_FRACTION = 0.9
MIN_EXIT_GAP = 0.05


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) if d is not None else 1 for d in t.shape[1:])


def _prod(xs: Sequence[int]) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def layer_macs(layer: Any, node_index: int = 0) -> int:
    """Multiply-accumulates of one call of ``layer`` (batch 1); 0 for layers without weights.

    Elementwise work (BN, activations, adds, pooling) is not counted: it is small next
    to the convolutions and is folded or fused by the converters anyway.
    """
    cls = type(layer).__name__
    node = layer.inbound_nodes[node_index]
    out = node.outputs if not isinstance(node.outputs, (list, tuple)) else node.outputs[0]
    ins = node.input_tensors
    inp = ins[0] if isinstance(ins, (list, tuple)) else ins
    out_shape, in_shape = _shape(out), _shape(inp)
    if cls in ("Conv2D", "Conv1D"):
        k = _prod(layer.kernel_size)
        return _prod(out_shape) * k * (in_shape[-1] // layer.groups)
    if cls == "DepthwiseConv2D":
        return _prod(out_shape) * _prod(layer.kernel_size)
    if cls == "SeparableConv2D":
        depthwise = _prod(out_shape[:-1]) * in_shape[-1] * layer.depth_multiplier
        return depthwise * _prod(layer.kernel_size) + depthwise * out_shape[-1]
    if cls == "Dense":
        return _prod(out_shape[:-1]) * in_shape[-1] * out_shape[-1]
    return 0


def model_macs(model: Any) -> int:
    """Total MACs of one inference of ``model`` (batch 1)."""
    return sum(layer_macs(layer) for layer in model.layers)


@dataclass(frozen=True)
class CutPoint:
    """A layer after which the model's whole state is one tensor: a valid stage boundary."""

    position: int  # index into model.layers
    layer: str
    macs: int  # cumulative MACs up to and including this layer
    fraction: float
    shape: tuple[int, ...]


def _consumer_types(layer: Any) -> list[str]:
    return [type(n.outbound_layer).__name__ for n in layer.outbound_nodes]


def _feeds_activation(layer: Any) -> bool:
    consumers = _consumer_types(layer)
    return len(consumers) == 1 and consumers[0] in _ACTIVATIONS


def _folds_forward(layer: Any) -> bool:
    """Whether a later layer (batch norm, activation) is folded into this conv's output."""
    return any(t in _FOLDED for t in _consumer_types(layer))


def cut_points(model: Any) -> list[CutPoint]:
    """Every layer output that all paths from the input to the output pass through.

    ``model.layers`` of a Functional model is in topological order; a cut after
    position ``i`` is valid when no tensor made at or before ``i`` other than layer
    ``i``'s output is still needed after it. A convolution's output qualifies when no
    batch norm or activation layer is folded into it afterwards (a conv with a fused
    ``activation=`` does); points before any MACs (right after preprocessing) do not.
    """
    layers = model.layers
    index = {id(layer): i for i, layer in enumerate(layers)}
    last_use = list(range(len(layers)))
    for i, layer in enumerate(layers):
        for node in layer.inbound_nodes[:1]:
            for parent in (
                node.inbound_layers
                if isinstance(node.inbound_layers, list)
                else [node.inbound_layers]
            ):
                j = index.get(id(parent))
                if j is not None:
                    last_use[j] = max(last_use[j], i)
    total = model_macs(model) or 1
    cum = 0
    open_until = 0  # furthest consumer of any tensor made so far
    outputs = {id(t) for t in model.outputs}
    points: list[CutPoint] = []
    for i, layer in enumerate(layers):
        cum += layer_macs(layer) if layer.inbound_nodes else 0
        before = open_until
        open_until = max(open_until, last_use[i])
        cls = type(layer).__name__
        if i == 0 or cls == "InputLayer" or before > i or cls in _UNCUTTABLE or cum == 0:
            continue
        if cls in _CONVS and _folds_forward(layer):
            continue
        if id(layer.get_output_at(0)) in outputs or last_use[i] == i:
            continue  # a model output or a dead end, not a boundary
        if _feeds_activation(layer):
            continue  # keep BN/add/conv + activation in one stage (fused in int8)
        if len(layer.get_output_at(0).shape) != 4:
            continue  # exits and stages sit on feature maps
        points.append(CutPoint(i, layer.name, cum, cum / total, _shape(layer.get_output_at(0))))
    return points


def pick_cuts(
    model: Any,
    *,
    fractions: Sequence[float] | None = None,
    layers: Sequence[str] | None = None,
    cost: Mapping[str, float] | None = None,
) -> list[CutPoint]:
    """Choose exit positions by cumulative-MAC fraction (nearest valid cut) or by layer name.

    ``cost``: another cumulative cost fraction per cut layer (measured latency, see
    ``converters/_placement``); fractions are then matched against it instead of MACs, and
    only the cut points it names are candidates.
    """
    points = cut_points(model)
    if cost is not None and not layers:
        points = [replace(p, fraction=cost[p.layer]) for p in points if p.layer in cost]
    if not points:
        raise ModelError(
            "the model has no layer after which it can be cut into stages",
            hint="exits need a feature map (4-D tensor) that every path passes "
            "through; add exits by hand with --exits LAYER,...",
        )
    chosen: list[CutPoint] = []
    if layers:
        by_name = {p.layer: p for p in points}
        names = {layer.name for layer in model.layers}
        for name in layers:
            if name not in by_name:
                what = (
                    "is not a place where the model can be cut (a branch is still open there, "
                    "or it splits a conv from its batch norm or activation)"
                    if name in names
                    else "does not exist in the model"
                )
                close = sorted(n for n in names if name.lower() in n.lower())[:5]
                also = (
                    f"; layers with similar names: {close}" if close and name not in names else ""
                )
                raise ModelError(
                    f"exit layer {name!r} {what}",
                    hint=f"valid exit layers: {describe_cut_points(points)}{also}",
                    layer=name,
                    valid=[p.layer for p in points],
                )
            chosen.append(by_name[name])
    else:
        for f in fractions or ():
            if not 0.0 < f < 1.0:
                raise ModelError(
                    f"exit fraction {f} is outside (0, 1)",
                    hint="give fractions of the model's MACs such as 0.15,0.4",
                )
        # Each fraction gets the nearest cut point not taken by an earlier one, so three
        # fractions give three exits whenever the model has three cut points. An exit past
        # MAX_EXIT_FRACTION of the MACs would save almost nothing over the final one.
        after, floor = -1, 0.0
        useful = [p for p in points if p.fraction <= MAX_EXIT_FRACTION] or points[:1]
        for f in sorted(fractions or ()):
            free = [p for p in useful if p.position > after and p.fraction >= floor]
            if not free:
                break
            best = min(free, key=lambda p: (abs(p.fraction - f), p.position))
            chosen.append(best)
            after, floor = best.position, best.fraction + MIN_EXIT_GAP
    chosen = sorted({p.position: p for p in chosen}.values(), key=lambda p: p.position)
    if cost is not None and not layers:  # back to the MAC fractions the rest relies on
        by_position = {p.position: p for p in cut_points(model)}
        chosen = [by_position[p.position] for p in chosen]
    return chosen


def describe_cut_points(points: Sequence[CutPoint], limit: int = 40) -> str:
    """``name (12%), ...`` for an error message; long lists keep both ends."""
    items = [
        f"{p.layer} ({p.fraction:.0%})" if p.fraction >= 0.01 else f"{p.layer} (<1%)"
        for p in points
    ]
    if len(items) > limit:
        half = limit // 2
        items = [*items[:half], f"... {len(items) - limit} more ...", *items[-half:]]
    return ", ".join(items)
