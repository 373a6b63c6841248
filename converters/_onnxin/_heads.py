"""Exit heads trained on the frozen backbone: pooled features computed once with
onnxruntime (and cached on disk), then a small MLP per exit trained in numpy, on labels
mixed with the model's own final logits, or on those logits alone (label-free)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import require
from edgekit._progress import Progress, say

from ._build import Head

__all__ = ["Features", "HeadConfig", "cache_dir", "compute_features", "train_head"]

_BATCH = 256


@dataclass(frozen=True)
class Features:
    """Pooled features per exit (float32) and the model's own logits for one image set."""

    pooled: tuple[np.ndarray, ...]
    logits: np.ndarray


@dataclass(frozen=True)
class HeadConfig:
    """How a head trains: epochs (early stopping on validation loss), Adam step, batch,
    hidden width, and the weight of the model's logits in the target (1: label-free)."""

    epochs: int = 8
    learning_rate: float = 2e-3
    batch_size: int = 256
    hidden: int = 128
    distill: float = 0.5
    patience: int = 3
    dropout: float = 0.2
    weight_decay: float = 1e-4
    seed: int = 0


def cache_dir() -> Path:
    """``$EDGEKIT_CACHE/onnx-features`` (default ``~/.cache/edgekit``)."""
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgekit"
    )
    return Path(base) / "onnx-features"


def _key(model_bytes: bytes, x: np.ndarray) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x).view(np.uint8).data)
    return h.hexdigest()[:32]


def compute_features(
    feature_proto: Any, x: np.ndarray, n_cuts: int, *, label: str, verbose: bool = True
) -> Features:
    """Run the float feature model over ``x`` (N, H, W, C in [0, 1]) with onnxruntime.

    Results are cached under :func:`cache_dir` keyed by the model and the images, so a
    second conversion with other head settings skips this step.
    """
    data = feature_proto.SerializeToString()
    path = cache_dir() / f"{_key(data, x)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                got = Features(
                    tuple(z[f"pooled_{k}"].astype(np.float32) for k in range(n_cuts)),
                    z["logits"].astype(np.float32),
                )
            if verbose:
                say(f"{label}: features from cache {path}")
            return got
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache entry is recomputed
    ort = require("onnxruntime", "convert", purpose="ONNX intake")
    from edgekit.runtime.backends.onnxruntime import session_options

    sess = ort.InferenceSession(
        data, session_options(os.cpu_count()), providers=["CPUExecutionProvider"]
    )
    names = [f"pooled_{k}" for k in range(n_cuts)] + ["logits"]
    outs: list[list[np.ndarray]] = [[] for _ in names]
    with Progress(f"{label}: backbone features", len(x), unit="img", enabled=verbose) as p:
        for i in range(0, len(x), _BATCH):
            xb = np.ascontiguousarray(x[i : i + _BATCH], np.float32)
            for o, r in zip(outs, sess.run(names, {"input": xb})):
                o.append(np.asarray(r, np.float32))
            p.update(len(xb))
    # Stored as float16; rounded the same way when fresh, so a cached run trains the same.
    pooled = [np.concatenate(o).astype(np.float16) for o in outs[:-1]]
    feats = Features(tuple(p.astype(np.float32) for p in pooled), np.concatenate(outs[-1]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        arrays: dict[str, Any] = {f"pooled_{k}": p for k, p in enumerate(pooled)}
        arrays["logits"] = feats.logits
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        _prune(path.parent, keep=path)
    except OSError:
        pass  # no cache is not an error
    return feats


def _prune(folder: Path, *, keep: Path) -> None:
    """Delete the least recently written entries beyond ``$EDGEKIT_CACHE_MAX_MB`` (2048)."""
    limit = float(os.environ.get("EDGEKIT_CACHE_MAX_MB", "2048")) * 2**20
    entries = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for p in entries:
        total += p.stat().st_size
        if total > limit and p != keep:
            p.unlink(missing_ok=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _targets(
    logits: np.ndarray, y: np.ndarray | None, num_classes: int, distill: float
) -> np.ndarray:
    soft = _softmax(logits.astype(np.float64)).astype(np.float32)
    if y is None or distill >= 1:
        return soft
    hard = np.eye(num_classes, dtype=np.float32)[y]
    return (1 - distill) * hard + distill * soft


def train_head(
    x_train: np.ndarray,
    teacher_train: np.ndarray,
    y_train: np.ndarray | None,
    x_val: np.ndarray,
    teacher_val: np.ndarray,
    y_val: np.ndarray | None,
    pool: tuple[int, int] | None,
    cfg: HeadConfig,
    *,
    label: str,
    verbose: bool = True,
) -> tuple[Head, list[dict[str, float]]]:
    """Train one head on pooled features; ``y_*`` None trains on the teacher's logits only.

    Returns the head (input standardisation folded into the first layer) and the history
    (``epoch``, ``loss``, ``val_loss``, ``val_acc``: against labels, or agreement with the
    model when there are none)."""
    rng = np.random.default_rng(cfg.seed)
    k = teacher_train.shape[1]
    distill = 1.0 if y_train is None else cfg.distill
    t_tr = _targets(teacher_train, y_train, k, distill)
    t_va = _targets(teacher_val, y_val, k, distill)
    ref_va = y_val if y_val is not None else teacher_val.argmax(1)
    mu = x_train.mean(0)
    sd = x_train.std(0) + 1e-3
    xt = ((x_train - mu) / sd).astype(np.float32)
    xv = ((x_val - mu) / sd).astype(np.float32)
    d, h = xt.shape[1], cfg.hidden
    params = [
        (rng.standard_normal((d, h)) * np.sqrt(2 / d)).astype(np.float32),
        np.zeros(h, np.float32),
        (rng.standard_normal((h, k)) * np.sqrt(1 / h)).astype(np.float32),
        np.zeros(k, np.float32),
    ]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    step = 0
    b1, b2 = np.float32(0.9), np.float32(0.999)
    best: tuple[float, list[np.ndarray]] = (np.inf, [p.copy() for p in params])
    history: list[dict[str, float]] = []
    bad = 0
    n = len(xt)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    keep_scale = np.float32(1 / (1 - cfg.dropout))
    start = time.monotonic()
    for epoch in range(cfg.epochs):
        perm = rng.permutation(n)
        losses = []
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb, tb = xt[idx], t_tr[idx]
            w1, c1, w2, c2 = params
            hid = np.maximum(xb @ w1 + c1, 0)
            mask = (rng.random(hid.shape, dtype=np.float32) >= cfg.dropout) * keep_scale
            hd = hid * mask
            p = _softmax(hd @ w2 + c2)
            losses.append(float(-(tb * np.log(p + 1e-8)).sum(1).mean()))
            g_out = (p - tb) / len(xb)
            g_w2 = hd.T @ g_out
            g_c2 = g_out.sum(0)
            g_h = (g_out @ w2.T) * mask * (hid > 0)
            g_w1 = xb.T @ g_h
            g_c1 = g_h.sum(0)
            step += 1
            # cosine decay over the whole run
            lr = np.float32(cfg.learning_rate * 0.5 * (1 + np.cos(np.pi * step / total_steps)))
            for i, g in enumerate((g_w1, g_c1, g_w2, g_c2)):
                if i in (0, 2):
                    g = g + cfg.weight_decay * params[i]
                m1[i] = b1 * m1[i] + (1 - b1) * g
                m2[i] = b2 * m2[i] + (1 - b2) * g * g
                mh = m1[i] / np.float32(1 - b1**step)
                vh = m2[i] / np.float32(1 - b2**step)
                params[i] -= lr * mh / (np.sqrt(vh) + np.float32(1e-8))
        w1, c1, w2, c2 = params
        pv = _softmax(np.maximum(xv @ w1 + c1, 0) @ w2 + c2)
        val_loss = float(-(t_va * np.log(pv + 1e-8)).sum(1).mean())
        val_acc = float((pv.argmax(1) == ref_va).mean())
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
        )
        if verbose:
            say(
                f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.4f} val_loss "
                f"{val_loss:.4f} val_{'acc' if y_val is not None else 'agree'} {val_acc:.4f} "
                f"({time.monotonic() - start:.0f} s)"
            )
        if val_loss < best[0] - 1e-4:
            best, bad = (val_loss, [p.copy() for p in params]), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    w1, c1, w2, c2 = best[1]
    # fold (x - mu) / sd into the first layer
    fw1 = (w1 / sd[:, None]).astype(np.float32)
    fc1 = (c1 - (mu / sd) @ w1).astype(np.float32)
    return Head(pool, fw1, fc1, w2, c2), history


def head_logits(head: Head, pooled: np.ndarray) -> np.ndarray:
    """The float head on pooled features (what the float ONNX head computes)."""
    return np.maximum(pooled @ head.w1 + head.b1, 0) @ head.w2 + head.b2


def accuracy(logits: np.ndarray, y: Sequence[int] | np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(y)).mean())
