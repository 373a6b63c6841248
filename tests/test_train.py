"""Training a multi-exit model: joint, heads-only, early stopping."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.converters._exits import attach_exits  # internal: exit heads, below convert
from edgekit.converters._graph import pick_cuts  # internal: where exits go, below convert
from edgekit.converters._models import builtin_cnn  # internal: the built-in model, below convert
from edgekit.converters._train import (  # internal: the training step alone
    TrainConfig,
    evaluate_exits,
    train_exits,
)


def _model() -> object:
    m = builtin_cnn((8, 8, 1), 10, width=8)
    return attach_exits(m, pick_cuts(m, fractions=[0.3]))


def test_heads_only_leaves_the_backbone_alone(digits: object) -> None:
    model = _model()
    backbone = {w.name: w.numpy().copy() for w in model.weights if not w.name.startswith("exit")}
    heads = {w.name: w.numpy().copy() for w in model.weights if w.name.startswith("exit")}
    d = digits
    train_exits(
        model,
        d.x_train,
        d.y_train,
        d.x_val,
        d.y_val,  # type: ignore[attr-defined]
        TrainConfig(epochs=2, heads_only=True),
        verbose=False,
    )
    for w in model.weights:
        if w.name in backbone:
            np.testing.assert_array_equal(w.numpy(), backbone[w.name], err_msg=w.name)
    changed = [
        n
        for n, v in heads.items()
        if not np.array_equal(v, next(w.numpy() for w in model.weights if w.name == n))
    ]
    assert changed, "heads-only training changed no head weight"
    assert all(layer.trainable for layer in model.layers)  # restored afterwards


def test_joint_training_learns_every_exit(digits: object) -> None:
    model = _model()
    d = digits
    res = train_exits(
        model,
        d.x_train,
        d.y_train,
        d.x_val,
        d.y_val,  # type: ignore[attr-defined]
        TrainConfig(epochs=12, distill=0.5),
        verbose=False,
    )
    accs = evaluate_exits(model, d.x_test, d.y_test)  # type: ignore[attr-defined]
    assert len(accs) == 2
    assert min(accs) > 0.8, accs
    assert 1 <= res.best_epoch <= res.epochs_run
    assert len(res.history) == res.epochs_run
    assert {"val_loss", "val_acc_exit0", "val_acc_exit1"} <= set(res.history[0])


def test_wrong_number_of_exit_weights(digits: object) -> None:
    d = digits
    with pytest.raises(ValueError, match="exit_weights"):
        train_exits(
            _model(),
            d.x_train,
            d.y_train,
            d.x_val,
            d.y_val,  # type: ignore[attr-defined]
            TrainConfig(epochs=1, exit_weights=(1.0, 1.0, 1.0)),
            verbose=False,
        )
