"""Joint training of a multi-exit model: weighted losses, self-distillation, early stopping."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit._progress import Progress, say

from ._keras import keras, tf

__all__ = ["TrainConfig", "TrainResult", "evaluate_exits", "predict_exits", "train_exits"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train a multi-exit model.

    ``distill`` is the weight of self-distillation for early exits: each learns from
    the final exit's outputs softened by ``temperature`` as well as from the labels.
    ``heads_only`` freezes the backbone (for an already trained model).
    """

    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 2e-3
    min_learning_rate_factor: float = 0.02
    exit_weights: tuple[float, ...] | None = None
    distill: float = 0.5
    temperature: float = 3.0
    patience: int = 3
    heads_only: bool = False
    flip: bool = True
    seed: int = 0


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def predict_exits(model: Any, x: np.ndarray, batch_size: int = 512) -> list[np.ndarray]:
    """Logits of every exit, as numpy arrays, in inference mode."""
    outs: list[list[np.ndarray]] = [[] for _ in model.outputs]
    fn = tf().function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
    for i in range(0, len(x), batch_size):
        for k, o in enumerate(fn(tf().constant(x[i : i + batch_size]))):
            outs[k].append(o.numpy())
    return [np.concatenate(o) for o in outs]


def evaluate_exits(model: Any, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Top-1 accuracy of every exit."""
    return [float((lg.argmax(1) == y).mean()) for lg in predict_exits(model, x)]


def _losses(t: Any, outputs: list[Any], y: Any, weights: list[float], cfg: TrainConfig) -> Any:
    ce = [t.reduce_mean(t.nn.sparse_softmax_cross_entropy_with_logits(y, o)) for o in outputs]
    total = sum(w * c for w, c in zip(weights, ce))
    if cfg.distill > 0 and len(outputs) > 1:
        T = cfg.temperature
        teacher = t.stop_gradient(t.nn.softmax(outputs[-1] / T))
        for w, o in zip(weights[:-1], outputs[:-1]):
            kl = t.reduce_mean(
                t.reduce_sum(
                    teacher * (t.math.log(teacher + 1e-8) - t.nn.log_softmax(o / T)), axis=-1
                )
            )
            total += w * cfg.distill * T * T * kl
    return total, ce


def train_exits(
    model: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    *,
    label: str = "train",
    verbose: bool = True,
) -> TrainResult:
    """Train ``model`` (outputs ``[exit_0, ..., final]``) in place; restores the best epoch."""
    t, k = tf(), keras()
    n_out = len(model.outputs)
    weights = list(cfg.exit_weights or [1.0] * n_out)
    if len(weights) != n_out:
        raise ValueError(f"exit_weights has {len(weights)} entries for {n_out} exits")
    if cfg.heads_only:
        for layer in model.layers:
            base = layer.name.split("quant_", 1)[-1]
            layer.trainable = base.startswith("exit") and base[4:5].isdigit()
    steps = math.ceil(len(x_train) / cfg.batch_size)
    schedule = k.optimizers.schedules.CosineDecay(
        cfg.learning_rate, max(1, steps * cfg.epochs), alpha=cfg.min_learning_rate_factor
    )
    opt = k.optimizers.Adam(schedule)
    variables = model.trainable_variables

    @t.function(reduce_retracing=True, autograph=False)
    def step(x: Any, y: Any) -> Any:
        with t.GradientTape() as tape:
            outs = model(x, training=True)
            loss, _ = _losses(t, outs, y, weights, cfg)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @t.function(reduce_retracing=True, autograph=False)
    def val_step(x: Any, y: Any) -> Any:
        outs = model(x, training=False)
        _, ce = _losses(t, outs, y, weights, cfg)
        # Early stopping watches the label loss only: the distillation term can grow
        # while accuracy improves, as the final exit's outputs sharpen.
        loss = sum(w * c for w, c in zip(weights, ce))
        correct = [t.reduce_sum(t.cast(t.equal(t.argmax(o, -1), y), t.float32)) for o in outs]
        return loss, correct

    rng = np.random.default_rng(cfg.seed)
    best, best_epoch, best_weights, bad = math.inf, 0, model.get_weights(), 0
    history: list[dict[str, float]] = []
    start = time.monotonic()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(x_train))
        running = 0.0
        with Progress(
            f"{label} epoch {epoch}/{cfg.epochs}", steps, unit="steps", enabled=verbose
        ) as bar:
            for s in range(steps):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                xb = x_train[idx]
                if cfg.flip:
                    flip = rng.random(len(idx)) < 0.5
                    xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
                loss = float(step(t.constant(xb), t.constant(y_train[idx])))
                running = loss if s == 0 else 0.98 * running + 0.02 * loss
                bar.update(1, f"loss {running:.3f}")
        vloss, vcorrect, n = 0.0, np.zeros(n_out), 0
        for i in range(0, len(x_val), 1024):
            xb, yb = x_val[i : i + 1024], y_val[i : i + 1024]
            loss_b, correct_b = val_step(t.constant(xb), t.constant(yb))
            vloss += float(loss_b) * len(xb)
            vcorrect += np.array([float(c) for c in correct_b])
            n += len(xb)
        vloss /= max(1, n)
        accs = vcorrect / max(1, n)
        history.append(
            {
                "epoch": epoch,
                "train_loss": running,
                "val_loss": vloss,
                **{f"val_acc_exit{i}": float(a) for i, a in enumerate(accs)},
            }
        )
        if verbose:
            say(
                f"{label} epoch {epoch}: val loss {vloss:.4f}, val accuracy per exit "
                + " ".join(f"{a:.3f}" for a in accs)
            )
        if vloss < best - 1e-4:
            best, best_epoch, best_weights, bad = vloss, epoch, model.get_weights(), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                if verbose:
                    say(
                        f"{label}: early stop, validation loss did not improve for "
                        f"{cfg.patience} epochs; keeping epoch {best_epoch}"
                    )
                break
    model.set_weights(best_weights)
    if cfg.heads_only:
        for layer in model.layers:
            layer.trainable = True
    return TrainResult(epoch, best_epoch, time.monotonic() - start, history)
