"""edgekit.runtime: run an edge package on a device, stopping early when confident.

Imports numpy and, when a model is loaded, one interpreter; nothing else.

    import edgekit
    model = edgekit.load("fmnist.edgepkg", policy="bandit")
    pred = model.predict(image)

Split computing: ``edgekit.load(pkg, offload="http://server:8000", policy="bandit")``
learns online whether to answer here or send a stage's int8 input to ``edgekit serve``.

Structure: ``_model`` (``load``, ``EdgeModel``: the one stage loop), ``_policy`` (the
policy contract: ``Policy``, ``Needs``, ``Decision``, ``Outcome``), ``_policies`` (the
built-in policies), ``_bandit`` (the algorithms), ``_input`` (image -> int8),
``_confidence`` (int8 logits -> confidence), ``_stats``, ``_prediction``, ``_persist``
(state files, saved in the background), ``_offload`` (the server client; its wire codec is
``edgekit._kserve``, shared with the server), ``backends/`` (one typed ``Backend`` per
interpreter). Host-side tools (evaluation, replay, plots) live in ``edgekit.evaluate``.
"""

from edgekit._errors import InputError, ModelClosedError, StateError
from edgekit._public import publish

from ._bandit import ALGORITHMS
from ._confidence import Confidence
from ._input import Quantizer
from ._model import EdgeModel, load
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
    "StateError",
    "ThresholdPolicy",
    "load",
    "parse_policy",
]

publish(globals())
