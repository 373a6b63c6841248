"""edgekit.runtime: run an edge package on a device, stopping early when confident.

Imports numpy and, when a model is loaded, one interpreter; nothing else.

    import edgekit
    model = edgekit.load("fmnist.edgepkg", policy="bandit")
    pred = model.predict(image)
"""

from ._bandit import ALGORITHMS
from ._input import InputError
from ._model import EdgeModel, load
from ._policies import (
    DEFAULT_ARMS,
    BanditConfig,
    BanditPolicy,
    FullPolicy,
    OraclePolicy,
    Policy,
    ThresholdPolicy,
    parse_policy,
)
from ._prediction import Prediction

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ARMS",
    "BanditConfig",
    "BanditPolicy",
    "EdgeModel",
    "FullPolicy",
    "InputError",
    "OraclePolicy",
    "Policy",
    "Prediction",
    "ThresholdPolicy",
    "load",
    "parse_policy",
]
