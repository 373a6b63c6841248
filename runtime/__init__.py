"""edgekit.runtime: run an edge package on a device, stopping early when confident.

Imports numpy and, when a model is loaded, one interpreter; nothing else.

    import edgekit
    model = edgekit.load("fmnist.edgepkg", policy="bandit")
    pred = model.predict(image)

Split computing: ``edgekit.load(pkg, offload="http://server:8000", policy="bandit")``
learns online whether to answer here or send a stage's int8 input to ``edgekit serve``.
"""

from ._bandit import ALGORITHMS
from ._confidence import Confidence
from ._input import InputError, Quantizer
from ._model import EdgeModel, ModelClosedError, load
from ._offload import OffloadConfig
from ._policies import (
    DEFAULT_ARMS,
    BanditConfig,
    BanditPolicy,
    FullPolicy,
    OraclePolicy,
    SplitBanditPolicy,
    SplitPolicy,
    ThresholdPolicy,
    parse_policy,
)
from ._policy import NEVER, Decision, Needs, Outcome, Policy
from ._prediction import OffloadInfo, Prediction
from .backends import StageRunner

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ARMS",
    "NEVER",
    "BanditConfig",
    "BanditPolicy",
    "Confidence",
    "Decision",
    "EdgeModel",
    "FullPolicy",
    "InputError",
    "ModelClosedError",
    "Needs",
    "OffloadConfig",
    "OffloadInfo",
    "OraclePolicy",
    "Outcome",
    "Policy",
    "Prediction",
    "Quantizer",
    "SplitBanditPolicy",
    "SplitPolicy",
    "StageRunner",
    "ThresholdPolicy",
    "load",
    "parse_policy",
]
