"""Models in: the built-in compact CNN, and user models read from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit._errors import ModelError

from ._keras import keras

__all__ = ["builtin_cnn", "classifier_logits", "load_model"]


def _conv_bn_relu(x: Any, channels: int, strides: int, name: str) -> Any:
    layers = keras().layers
    x = layers.Conv2D(
        channels, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def builtin_cnn(input_shape: tuple[int, ...], num_classes: int, *, width: int = 32) -> Any:
    """A compact CNN sized for small images (about 18 M MACs on 28x28x1 at ``width=32``).

    Strided convolutions move most of the work to low resolution, where CPU kernels
    are efficient; every block is conv + BN + ReLU, which QAT and int8 fuse well.
    """
    k = keras()
    layers = k.layers
    inp = k.Input(input_shape, name="input")
    x = _conv_bn_relu(inp, width, 1, "block1")
    x = _conv_bn_relu(x, width, 2 if input_shape[0] >= 16 else 1, "block2")
    x = _conv_bn_relu(x, 2 * width, 1, "block3")
    x = _conv_bn_relu(x, 2 * width, 2, "block4")
    x = _conv_bn_relu(x, 4 * width, 1, "block5")
    x = _conv_bn_relu(x, 4 * width, 1, "block6")
    # A small grid instead of global pooling keeps where things are: Fashion-MNIST's hard
    # classes (shirt, T-shirt, pullover) differ in shape, not in texture.
    x = layers.AveragePooling2D(2, padding="same", name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    out = layers.Dense(num_classes, name="classifier")(x)
    return k.Model(inp, out, name="edgekit_cnn")


def load_model(path: str | Path) -> Any:
    """Read a tf-keras Functional model (``.keras``, ``.h5`` or a SavedModel folder)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist", path=str(path))
    k = keras()
    try:
        model = k.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many unrelated types for a bad file
        raise ModelError(
            f"{path} is not a Keras model that tf-keras can read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
            hint="save the model with tf_keras: model.save('model.keras'); "
            "Keras 3 files must be re-saved from tf_keras",
            path=str(path),
        ) from exc
    from ._exits import is_trained

    if is_trained(model):
        return model  # a checkpoint convert kept: exits and final logits already in place
    return check_functional(model, str(path))


def check_functional(model: Any, where: str = "the model") -> Any:
    """Refuse models QAT and stage cutting cannot handle, saying why."""
    k = keras()
    if not isinstance(model, k.Model):
        raise ModelError(
            f"{where} is not a tf-keras Model (got {type(model).__name__})",
            hint="build it with `import tf_keras as keras`",
        )
    if not getattr(model, "_is_graph_network", False):
        raise ModelError(
            f"{where} is a subclassed Keras model; edgekit needs a Functional or Sequential one",
            hint="rebuild it with keras.Input(...) and layer calls",
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"{where} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; edgekit converts single-input classifiers",
            hint="export the classification branch as its own model",
        )
    if len(model.inputs[0].shape) != 4:
        raise ModelError(
            f"{where} takes input of shape {tuple(model.inputs[0].shape)}; edgekit "
            "expects images (batch, height, width, channels)"
        )
    if isinstance(model, k.Sequential):
        model = k.Model(model.inputs, model.outputs, name=model.name)
    return classifier_logits(model)


def classifier_logits(model: Any) -> Any:
    """The same model ending in logits: a final softmax is removed (weights are shared)."""
    k = keras()
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    is_softmax_act = type(last).__name__ in ("Softmax",) or (
        type(last).__name__ == "Activation" and getattr(act, "__name__", "") == "softmax"
    )
    if is_softmax_act:
        return k.Model(model.inputs, last.input, name=model.name)
    if type(last).__name__ == "Dense" and getattr(act, "__name__", "") == "softmax":
        cfg = last.get_config()
        cfg.update(activation="linear", name=f"{last.name}_logits")
        dense = type(last).from_config(cfg)
        out = dense(last.input)
        dense.set_weights(last.get_weights())
        return k.Model(model.inputs, out, name=model.name)
    return model
