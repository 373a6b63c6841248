"""The tail of a package: stages ``s..N-1`` in an interpreter, run on whole batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import EdgekitError, PackageError
from edgekit._package import Manifest, QuantParams
from edgekit.runtime import Confidence, backends

__all__ = ["Tail", "TailInput", "open_tails"]

_log = logging.getLogger("edgekit.serve")


@dataclass(frozen=True)
class TailInput:
    """What a split point takes: shape without batch, and the 8-bit grid of the server's
    interpreter (the device may send the other 8-bit type: same scale, zero point +-128)."""

    split: int
    shape: tuple[int, ...]
    quant: QuantParams

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.quant.dtype)


class Tail:
    """Stages ``split..N-1``: an 8-bit batch in, (FP32 logits [B, C], FP32 confidence [B]) out.

    Not thread-safe (interpreters keep state): one caller at a time, which the batcher of
    its model guarantees.
    """

    def __init__(
        self,
        split: int,
        runners: Sequence[backends.StageRunner],
        input_spec: TailInput,
        logits_quant: QuantParams,
        max_batch: int,
    ) -> None:
        self.split = split
        self.input = input_spec
        self.max_batch = max_batch
        self._runners = list(runners)
        self._lq = logits_quant
        self._conf = Confidence(logits_quant.scale)
        self._zp: dict[np.dtype, np.float32] = {}
        self.n_classes = 0

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(x) > self.max_batch:  # one large request, or stages that cannot batch
            parts = [self(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        h: Any = x
        logits: Any = None
        for run in self._runners:
            h, logits = run(h)
        return self._dequantize(logits), self._confidence(logits)

    def _dequantize(self, q: np.ndarray) -> np.ndarray:
        zp = self._zp.get(q.dtype)
        if zp is None:
            zp = self._zp[q.dtype] = np.float32(self._lq.as_dtype(q.dtype.name).zero_point)
        out = q.astype(np.float32)
        out -= zp
        out *= np.float32(self._lq.scale)
        return out

    def _confidence(self, q: np.ndarray) -> np.ndarray:
        return self._conf.batch(q)[1].astype(np.float32)

    def check_batching(self) -> None:
        """Run batch 1 and batch 2 once: warms the interpreters up and proves the stages
        take a batch dimension (ONNX: dynamic; TFLite: resized)."""
        outs = []
        for b in (1, 2):
            x = np.full((b, *self.input.shape), self.input.quant.zero_point, self.input.dtype)
            try:
                logits, conf = self(x)
            except Exception as exc:
                if b == 1:
                    raise
                _log.warning(
                    "edgekit: split %d does not run batches (%s); serving it one input at a time",
                    self.split,
                    exc,
                )
                self.max_batch = 1
                return
            if logits.shape[0] != b or conf.shape != (b,):
                raise PackageError(
                    f"split {self.split}: a batch of {b} gave logits of shape {logits.shape}",
                    hint="the stages must have a batch dimension (convert again)",
                )
            outs.append(logits)
        self.n_classes = int(outs[0].shape[1])
        if not np.array_equal(outs[1][0], outs[0][0]):
            _log.warning("edgekit: split %d: batch 2 differs from batch 1", self.split)

    def close(self) -> None:
        for r in self._runners:
            r.close()
        self._runners = []


def open_tails(
    root: Path, manifest: Manifest, backend: str, *, threads: int | None, max_batch: int
) -> list[Tail]:
    """One :class:`Tail` per split point ``0..N-1``, each with its own interpreters (models
    run in parallel worker threads, and interpreters are not thread-safe)."""
    mod = backends.get(backend)
    if mod.FORMAT not in manifest.formats:
        raise PackageError(
            f"backend {backend!r} runs {mod.FORMAT} models, which this package does not have "
            f"(it has {', '.join(manifest.formats) or 'none'})",
            hint="pick --backend onnxruntime or litert to match the package's formats",
        )
    stages = manifest.stages
    last = stages[-1].logits.quant
    if last is None:
        raise PackageError("the last stage has no logits quantization in the manifest")
    tails: list[Tail] = []
    try:
        for s in range(len(stages)):
            runners: list[backends.StageRunner] = []
            tail = None
            try:
                for st in stages[s:]:
                    runners.append(mod.open_stage(root / st.files[mod.FORMAT], threads))
                q = stages[s].input.quant
                if q is None:
                    raise PackageError(f"stage {s} has no input quantization in the manifest")
                act = np.dtype(runners[0].input_dtype).name
                if act not in ("int8", "uint8"):
                    raise PackageError(f"stage {s} takes {act}, not an 8-bit tensor")
                spec = TailInput(s, tuple(stages[s].input.shape[1:]), q.as_dtype(act))
                tail = Tail(s, runners, spec, last, max_batch)
                tail.check_batching()
            except Exception:
                for r in runners:
                    r.close()
                raise
            tails.append(tail)
    except EdgekitError:
        for t in tails:
            t.close()
        raise
    except Exception as exc:
        for t in tails:
            t.close()
        raise PackageError(
            f"cannot load the package's stages in {backend}: {exc}",
            hint="check the package with `edgekit verify`, or try another --backend",
        ) from exc
    return tails
