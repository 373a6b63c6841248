"""Early-exit heads: attach them to a backbone, and cut the result into stages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._graph import CutPoint, layer_macs
from ._keras import keras, tf

__all__ = ["attach_exits", "head_macs", "is_trained", "split_trained", "submodel"]


def _head(x: Any, num_classes: int, name: str, hidden: int) -> Any:
    """Pool to a grid of at most 4x4 (keeping layout), then a small MLP."""
    layers = keras().layers
    h = int(x.shape[1])
    if h > 4:
        pool = math.ceil(h / 4)
        x = layers.AveragePooling2D(pool, strides=pool, name=f"{name}_pool")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(hidden, activation="relu", name=f"{name}_dense")(x)
    x = layers.Dropout(0.2, name=f"{name}_dropout")(x)
    return layers.Dense(num_classes, name=f"{name}_logits")(x)


def attach_exits(backbone: Any, cuts: Sequence[CutPoint], *, hidden: int = 128) -> Any:
    """A model with outputs ``[exit_0, ..., exit_n]``: one head per cut, then the backbone's.

    The backbone's layers are shared, not copied.
    """
    num_classes = int(backbone.outputs[0].shape[-1])
    by_name = {layer.name: layer for layer in backbone.layers}
    outs = [
        _head(by_name[c.layer].get_output_at(0), num_classes, f"exit{i}", hidden)
        for i, c in enumerate(cuts)
    ]
    outs.append(backbone.outputs[0])
    return keras().Model(backbone.inputs, outs, name=f"{backbone.name}_exits")


def is_trained(model: Any) -> bool:
    """Whether ``model`` is one :func:`attach_exits` made (outputs ``exit{i}_logits``, final)."""
    outs = [t._keras_history.layer.name for t in getattr(model, "outputs", None) or []]
    return len(outs) >= 2 and all(n == f"exit{i}_logits" for i, n in enumerate(outs[:-1]))


def split_trained(model: Any) -> tuple[Any, list[str]] | None:
    """For a model with exits (a checkpoint convert kept): its backbone and cut layers.

    None for any other model. The backbone shares the layers (and trained weights).
    """
    if not is_trained(model):
        return None
    by_name = {layer.name: layer for layer in model.layers}
    cuts = []
    for i in range(len(model.outputs) - 1):
        layer = by_name[f"exit{i}_logits"]
        while layer.name.startswith(f"exit{i}_"):
            (layer,) = [t._keras_history.layer for t in _inputs_of(layer)]
        cuts.append(layer.name)
    backbone = keras().Model(
        model.inputs, model.outputs[-1], name=model.name.removesuffix("_exits")
    )
    return backbone, cuts


def head_macs(model: Any, exit_index: int) -> int:
    """MACs of exit ``exit_index``'s head (layers named ``exit{i}_*``)."""
    prefix = f"exit{exit_index}_"
    return sum(
        layer_macs(layer)
        for layer in model.layers
        if layer.name.split("quant_", 1)[-1].startswith(prefix)
    )


def _inputs_of(layer: Any) -> list[Any]:
    """Every Keras tensor the layer's first call read, keyword arguments included.

    ``input_tensors`` holds only the first argument of a ``TFOpLambda`` (``x + skip`` is
    ``add(x, y=skip)``), which would leave ``skip``'s branch out of a stage.
    """
    node = layer.inbound_nodes[0]
    flat = tf().nest.flatten((node.call_args, node.call_kwargs))
    return [t for t in flat if hasattr(t, "_keras_history")]


def submodel(
    model: Any,
    start: str | None,
    ends: Sequence[str],
    *,
    names: Sequence[str],
    input_range: tuple[float, float] | None = None,
    name: str = "stage",
) -> Any:
    """The part of ``model`` between layer ``start``'s output (None: the model input) and
    the outputs of layers ``ends``, as a new Model sharing the same weights.

    Layers are re-called on a new Input; the outputs are named ``names``. With
    ``input_range``, a fake-quant op with that range sits at the input, so a QAT stage
    takes the previous stage's int8 tensor with the very same scale and zero point.
    """
    k = keras()
    by_name = {layer.name: layer for layer in model.layers}
    src = model.inputs[0] if start is None else by_name[start].get_output_at(0)
    inp = k.Input(tuple(src.shape[1:]), name="input")
    x = inp
    if input_range is not None:
        lo, hi = input_range
        fake_quant = tf().quantization.fake_quant_with_min_max_args
        x = k.layers.Lambda(lambda t: fake_quant(t, lo, hi, num_bits=8), name="input_fake_quant")(
            inp
        )
    mapped: dict[int, Any] = {id(src): x}
    # Layers needed: ancestors of the ends, stopping at the start tensor.
    needed: set[str] = set()
    todo = list(ends)
    while todo:
        n = todo.pop()
        if n in needed:
            continue
        layer = by_name[n]
        if start is not None and n == start:
            continue
        if type(layer).__name__ == "InputLayer":
            continue
        needed.add(n)
        todo.extend(t._keras_history.layer.name for t in _inputs_of(layer) if id(t) != id(src))
    for layer in model.layers:
        if layer.name not in needed:
            continue
        node = layer.inbound_nodes[0]
        args = tf().nest.map_structure(
            lambda t: mapped.get(id(t), t) if hasattr(t, "_keras_history") else t, node.call_args
        )
        kwargs = tf().nest.map_structure(
            lambda t: mapped.get(id(t), t) if hasattr(t, "_keras_history") else t, node.call_kwargs
        )
        out = layer(*args, **kwargs)
        mapped[id(node.outputs[0] if isinstance(node.outputs, list) else node.outputs)] = out
    outs = []
    for end, out_name in zip(ends, names):
        t = mapped[id(by_name[end].get_output_at(0))]
        outs.append(k.layers.Activation("linear", name=out_name)(t))
    return k.Model(inp, outs, name=name)
