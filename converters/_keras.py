"""Import TensorFlow with tf-keras (Keras 2), which QAT (tfmot) requires.

``TF_USE_LEGACY_KERAS`` must be set before TensorFlow is first imported; importing
tfmot flips it itself, which silently changes what ``tf.keras`` means, so every
converter module gets TensorFlow and Keras from here.
"""

from __future__ import annotations

import os
from types import ModuleType

from edgekit._errors import require

__all__ = ["keras", "tf", "tfmot"]


def tf() -> ModuleType:
    """The ``tensorflow`` module, imported with tf-keras as ``tf.keras``."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", "convert", purpose="converting models")


def keras() -> ModuleType:
    """The ``tf_keras`` module (Keras 2)."""
    tf()
    return require("tf_keras", "convert", purpose="building and training Keras models")


def tfmot() -> ModuleType:
    """The ``tensorflow_model_optimization`` module (quantization-aware training)."""
    keras()
    return require(
        "tensorflow_model_optimization", "convert", purpose="quantization-aware training"
    )
