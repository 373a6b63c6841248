"""Cut points, MAC counts and exit placement on real Keras architectures."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import ModelError
from edgekit.converters._exits import (  # internal: exit heads and stage cuts, below convert
    attach_exits,
    submodel,
)
from edgekit.converters._graph import (  # internal: where exits go, below convert
    cut_points,
    layer_macs,
    model_macs,
    pick_cuts,
)
from edgekit.converters._keras import keras  # internal: tf-keras imported as the converters do
from edgekit.converters._models import (  # internal: the built-in models, below convert
    builtin_cnn,
    check_functional,
)


@pytest.fixture(scope="module")
def mobilenet() -> object:
    k = keras()
    return check_functional(
        k.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)
    )


def test_builtin_cnn_size() -> None:
    m = builtin_cnn((28, 28, 1), 10)
    assert 10e6 < model_macs(m) < 40e6  # "tens of millions of MACs on 28x28"


def test_conv_and_dense_macs() -> None:
    k = keras()
    inp = k.Input((8, 8, 3))
    c = k.layers.Conv2D(4, 3, padding="same")(inp)
    d = k.layers.Dense(5)(k.layers.Flatten()(c))
    m = k.Model(inp, d)
    assert layer_macs(m.layers[1]) == 8 * 8 * 4 * 3 * 3 * 3
    assert layer_macs(m.layers[3]) == 8 * 8 * 4 * 5


def test_cut_points_skip_open_branches(mobilenet: object) -> None:
    names = [p.layer for p in cut_points(mobilenet)]
    assert "block_2_add" in names
    # inside a residual block the skip connection is still open: not a cut
    assert "block_2_expand_relu" not in names
    # BN that feeds a ReLU stays fused with it
    assert "bn_Conv1" not in names and "Conv1_relu" in names
    fractions = [p.fraction for p in cut_points(mobilenet)]
    assert fractions == sorted(fractions)


def test_pick_cuts_by_fraction_and_name(mobilenet: object) -> None:
    cuts = pick_cuts(mobilenet, fractions=[0.25, 0.5, 0.75])
    assert len(cuts) == 3
    assert all(abs(c.fraction - f) < 0.1 for c, f in zip(cuts, [0.25, 0.5, 0.75]))
    named = pick_cuts(mobilenet, layers=["block_5_add", "block_2_add"])
    assert [c.layer for c in named] == ["block_2_add", "block_5_add"]


@pytest.mark.parametrize("bad", [[0.0], [1.0], [1.5]])
def test_bad_fractions(mobilenet: object, bad: list[float]) -> None:
    with pytest.raises(ModelError, match="outside"):
        pick_cuts(mobilenet, fractions=bad)


def test_unknown_layer_suggests_names(mobilenet: object) -> None:
    with pytest.raises(ModelError) as err:
        pick_cuts(mobilenet, layers=["block_2_ad"])
    assert "block_2_add" in str(err.value)


def test_chained_submodels_equal_the_multi_exit_model(mobilenet: object) -> None:
    cuts = pick_cuts(mobilenet, fractions=[0.25, 0.5, 0.75])
    me = attach_exits(mobilenet, cuts)
    outs = [t._keras_history.layer.name for t in me.outputs]
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    full = me(x, training=False)
    h = x
    for k in range(len(cuts) + 1):
        start = None if k == 0 else cuts[k - 1].layer
        if k < len(cuts):
            st = submodel(me, start, [cuts[k].layer, outs[k]], names=["f", "l"])
            h, logits = st(h, training=False)
        else:
            logits = submodel(me, start, [outs[k]], names=["l"])(h, training=False)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[k]), atol=1e-5)


def test_softmax_head_becomes_logits() -> None:
    k = keras()
    inp = k.Input((8, 8, 1))
    x = k.layers.Flatten()(k.layers.Conv2D(2, 3)(inp))
    m = check_functional(k.Model(inp, k.layers.Dense(3, activation="softmax")(x)))
    assert m.layers[-1].get_config()["activation"] == "linear"
    x = np.ones((1, 8, 8, 1), np.float32)
    assert not np.allclose(np.asarray(m(x)).sum(), 1.0)


def test_subclassed_and_multi_input_models_are_refused() -> None:
    k = keras()

    class Sub(k.Model):  # type: ignore[misc,name-defined]
        def call(self, x: object) -> object:
            return x

    with pytest.raises(ModelError, match="subclassed"):
        check_functional(Sub())
    a, b = k.Input((4, 4, 1)), k.Input((4, 4, 1))
    with pytest.raises(ModelError, match="2 inputs"):
        check_functional(k.Model([a, b], k.layers.Add()([a, b])))


def _fused_cnn(batch_norm: bool) -> object:
    k = keras()
    layers = k.layers
    inp = k.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255.0, name="rescale")(inp)
    for i in range(3):
        x = layers.Conv2D(
            8,
            3,
            strides=2 if i else 1,
            padding="same",
            name=f"c{i}",
            activation=None if batch_norm else "relu",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"bn{i}")(x)
            x = layers.ReLU(name=f"r{i}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, layers.Dense(3)(x))


def test_conv_with_fused_activation_is_a_cut_point_and_nothing_sits_at_zero_macs() -> None:
    names = [p.layer for p in cut_points(_fused_cnn(batch_norm=False))]
    assert names == ["c0", "c1", "c2"]  # not "rescale": no MACs before it
    bn = [p.layer for p in cut_points(_fused_cnn(batch_norm=True))]
    assert bn == ["r0", "r1", "r2"]  # a conv followed by its batch norm is not a cut
    assert all(p.macs > 0 for p in cut_points(_fused_cnn(batch_norm=False)))


def test_fractions_get_distinct_cut_points_short_of_the_end() -> None:
    k = keras()
    inp = k.Input((8, 8, 8))
    x = inp
    for i in range(4):  # equal MACs: cut points at 25, 50, 75 and ~100%
        x = k.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"c{i}")(x)
    model = k.Model(inp, k.layers.Dense(2)(k.layers.GlobalAveragePooling2D()(x)))
    cuts = pick_cuts(model, fractions=[0.3, 0.35, 0.4])
    assert [c.layer for c in cuts] == ["c0", "c1", "c2"]  # three exits, not one
    cuts = pick_cuts(model, fractions=[0.5, 0.95])
    assert [c.layer for c in cuts] == ["c1", "c2"]  # c3 (~100%) would save nothing
    assert [c.layer for c in pick_cuts(model, layers=["c3"])] == ["c3"]  # by name: allowed


@pytest.mark.parametrize("name", ["no_such_layer", "c1"])
def test_a_bad_exit_name_lists_the_valid_cut_points(name: str) -> None:
    with pytest.raises(ModelError) as err:
        pick_cuts(_fused_cnn(batch_norm=True), layers=[name])
    hint = err.value.hint or ""
    assert "valid exit layers: r0 (" in hint and "r2 (" in hint
    assert err.value.context["valid"] == ["r0", "r1", "r2"]


def test_an_add_followed_by_its_activation_is_cut_after_the_activation() -> None:
    k = keras()
    layers = k.layers
    inp = k.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    y = layers.Conv2D(8, 3, padding="same", name="branch")(x)
    x = layers.ReLU(name="post")(layers.Add(name="sum")([x, y]))
    model = k.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    assert [p.layer for p in cut_points(model)] == ["stem", "post"]


def test_stages_keep_a_skip_branch_added_with_the_plus_operator() -> None:
    """``x + skip`` is a TFOpLambda whose second operand is a keyword argument (RegNet)."""
    k = keras()
    layers = k.layers
    inp = k.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    skip = layers.Conv2D(8, 1, name="skip")(x)
    y = layers.Conv2D(8, 3, padding="same", name="body")(x)
    x = layers.ReLU(name="out_relu")(y + skip)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="head_conv")(x)
    model = k.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    head = submodel(model, None, ["out_relu"], names=["f"])
    tail = submodel(model, "out_relu", [model.layers[-1].name], names=["logits"])
    x0 = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(tail(head(x0)).numpy(), model(x0).numpy(), rtol=1e-5, atol=1e-6)


def test_exits_by_fraction_are_not_a_pooling_layer_apart() -> None:
    k = keras()
    layers = k.layers
    inp = k.Input((16, 16, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c0")(inp)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    x = layers.MaxPooling2D(name="pool")(x)  # no MACs: the same place as c1
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="c3")(x)
    model = k.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    cuts = pick_cuts(model, fractions=[0.4, 0.5])  # c1 and pool sit at 44%, c2 at 63%
    assert [c.layer for c in cuts] == ["c1", "c2"]
