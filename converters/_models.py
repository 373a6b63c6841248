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


def load_model(path: str | Path, custom_objects: dict[str, Any] | None = None) -> Any:
    """Read a tf-keras Functional model (``.keras``, ``.h5`` or a SavedModel folder).

    Layers the file names but Keras cannot resolve by itself (tf-keras's own application
    modules define some, e.g. ConvNeXt's ``LayerScale``, without registering them) are
    looked up in the module the file records, then in ``tf_keras.src.applications``;
    ``custom_objects`` (name -> class) are used first.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist", path=str(path))
    k = keras()
    given = dict(custom_objects or {})
    entries = _layer_entries(_saved_config(path))
    found, unresolved = _resolve_layers(entries, given)
    try:
        model = k.models.load_model(path, compile=False, custom_objects={**found, **given})
    except Exception as exc:  # Keras raises many unrelated types for a bad file
        if unresolved:
            names = ", ".join(f"'{n}'" for n in unresolved)
            raise ModelError(
                f"{path} uses layer{'s' if len(unresolved) > 1 else ''} {names} that "
                "tf-keras cannot resolve: not a built-in layer, not registered, and not "
                "found in the module the file names or in tf_keras.src.applications",
                hint="convert from Python with the class made known to tf-keras first: "
                f"tf_keras.utils.get_custom_objects()['{unresolved[0]}'] = {unresolved[0]} "
                "(the command line cannot import your code)",
                path=str(path),
                layers=unresolved,
            ) from exc
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


def _saved_config(path: Path) -> Any:
    """The model config a ``.keras`` or ``.h5`` file holds, without building it (or None)."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        if path.is_file():
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    return None
                return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:  # unreadable here: load_model below says what is wrong with the file
        return None
    return None  # a SavedModel folder keeps its own graph for layers it cannot resolve


def _layer_entries(config: Any) -> list[dict[str, Any]]:
    """Every layer entry of a saved model config, nested models and wrapped layers too."""
    out: list[dict[str, Any]] = []

    def walk(entry: Any) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            return
        out.append(entry)
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            return
        for sub in cfg.get("layers") or []:
            walk(sub)
        for key in ("layer", "backward_layer"):  # wrappers: TimeDistributed, Bidirectional
            walk(cfg.get(key))

    walk(config)
    return out


def _resolve_layers(
    entries: list[dict[str, Any]], given: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Classes for the layer names Keras cannot resolve itself, and the names still unknown."""
    from tf_keras.src.layers import serialization

    k = keras()
    serialization.populate_deserializable_objects()
    builtin = serialization.LOCAL.ALL_OBJECTS
    found: dict[str, Any] = {}
    unresolved: list[str] = []
    for e in entries:
        name: str = e["class_name"]
        registered = e.get("registered_name") or name
        if (
            name in builtin
            or name in given
            or name in found
            or name in unresolved
            or k.utils.get_registered_object(registered) is not None
        ):
            continue
        cls = _find_layer_class(name, e.get("module"))
        if cls is None:
            unresolved.append(name)
        else:
            found[name] = cls
    return found, unresolved


def _find_layer_class(name: str, module: Any) -> Any:
    """A Layer subclass called ``name`` in tf-keras: the module the file records, if it is
    one of tf-keras's, else any ``tf_keras.src.applications`` module. Nothing outside
    tf-keras is imported on a file's word."""
    import importlib
    import pkgutil

    k = keras()
    candidates: list[str] = []
    if isinstance(module, str):
        if module.startswith("keras."):  # saved by tf.keras before tf-keras was split out
            module = "tf_keras." + module[len("keras.") :]
        if module.startswith("tf_keras."):
            candidates.append(module)
    apps = importlib.import_module("tf_keras.src.applications")
    candidates += [
        f"{apps.__name__}.{m.name}" for m in pkgutil.iter_modules(apps.__path__) if not m.ispkg
    ]
    for mod_name in candidates:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and issubclass(cls, k.layers.Layer):
            return cls
    return None


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
