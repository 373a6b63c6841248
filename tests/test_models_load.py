"""Reading user model files whose layers Keras does not resolve by itself (issue 17).

tf-keras's ConvNeXt module defines ``LayerScale`` and ``StochasticDepth`` without registering
them, so tf-keras cannot read back a ConvNeXt file it saved itself. These tests use the real
classes from tf-keras in a tiny model (ConvNeXtTiny itself is 28 M parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit import ModelError
from edgekit.converters._keras import keras  # internal: tf-keras imported as the converters do
from edgekit.converters._models import load_model  # internal: the loader convert uses


def _tiny_with_app_layers() -> Any:
    k = keras()
    from tf_keras.src.applications.convnext import LayerScale, StochasticDepth

    inp = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3, padding="same")(inp)
    y = LayerScale(0.5, 4)(x)
    y = StochasticDepth(0.2)(y)
    x = k.layers.Add()([x, y])
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(3)(x))  # logits: load_model leaves the head as is


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_unregistered_application_layers_load_and_predict_the_same(
    tmp_path: Path, ext: str
) -> None:
    model = _tiny_with_app_layers()
    rng = np.random.default_rng(0)
    # LayerScale's gamma starts at a constant: give every weight a value of its own, so a
    # weight that did not load shows in the outputs.
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    path = tmp_path / f"m{ext}"
    model.save(path)
    # What tf-keras does by itself (the bug this works around): .keras gives the class name
    # string where the layer should be, .h5 "Unknown layer".
    with pytest.raises((TypeError, ValueError)):
        keras().models.load_model(path, compile=False)(np.zeros((1, 8, 8, 3), np.float32))

    loaded = load_model(path)

    names = [type(layer).__name__ for layer in loaded.layers]
    assert "LayerScale" in names and "StochasticDepth" in names
    x = rng.random((4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_unknown_layer_is_named_with_what_to_do(tmp_path: Path, ext: str) -> None:
    k = keras()

    class Doubler(k.layers.Layer):  # type: ignore[name-defined]
        def call(self, x: Any) -> Any:
            return x * 2.0

    inp = k.Input((8, 8, 3))
    x = k.layers.GlobalAveragePooling2D()(Doubler()(inp))
    model = k.Model(inp, k.layers.Dense(3)(x))
    path = tmp_path / f"m{ext}"
    model.save(path)

    with pytest.raises(ModelError) as err:
        load_model(path)
    assert "'Doubler'" in err.value.message
    assert err.value.hint is not None and "get_custom_objects()['Doubler']" in err.value.hint
    assert err.value.context["layers"] == ["Doubler"]

    loaded = load_model(path, custom_objects={"Doubler": Doubler})
    xs = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(xs).numpy(), model(xs).numpy(), rtol=1e-5, atol=1e-6)


def test_registered_by_the_user_loads(tmp_path: Path) -> None:
    """The way the hint tells a user to make a layer known works for convert's loader."""
    k = keras()

    class Halver(k.layers.Layer):  # type: ignore[name-defined]
        def call(self, x: Any) -> Any:
            return x * 0.5

    inp = k.Input((8, 8, 3))
    model = k.Model(inp, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(Halver()(inp))))
    path = tmp_path / "m.keras"
    model.save(path)
    k.utils.get_custom_objects()["Halver"] = Halver
    try:
        loaded = load_model(path)
    finally:
        del k.utils.get_custom_objects()["Halver"]
    assert [type(layer).__name__ for layer in loaded.layers][1] == "Halver"
