"""``load``: an edge package in an interpreter, run stage by stage under an exit policy."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgekit._errors import ModelClosedError, PackageError
from edgekit._package import Manifest, QuantParams, read_manifest

from . import backends
from ._confidence import Confidence
from ._input import Quantizer
from ._offload import OffloadClient, OffloadConfig, OffloadFailure
from ._persist import Autosave
from ._policies import parse_policy
from ._policy import NEVER, Outcome, Policy
from ._prediction import OffloadInfo, Prediction
from ._stats import Stats
from .backends import StageRunner

__all__ = ["EdgeModel", "ModelClosedError", "load"]

_log = logging.getLogger("edgekit")


def load(
    package: str | os.PathLike[str],
    *,
    backend: str = "auto",
    policy: str | Policy = "bandit",
    threads: int | None = 1,
    confidence: str = "max_softmax",
    state: str | os.PathLike[str] | None = None,
    verify: bool = True,
    offload: str | OffloadConfig | None = None,
    offload_token: str | None = None,
    offload_timeout_ms: float | None = None,
    offload_ca: str | None = None,
    wrap_stage: Callable[[int, StageRunner], StageRunner] | None = None,
    unsplit: bool = True,
    **policy_options: Any,
) -> EdgeModel:
    """Open an edge package for inference.

    ``backend``: ``auto`` (the best installed: Edge TPU, LiteRT, tflite-runtime,
    tensorflow.lite, onnxruntime) or one of those names. ``policy``: ``full``,
    ``threshold:T``, ``bandit[:ALGO]``, ``oracle`` or a :class:`Policy`. ``state``: where a
    bandit keeps what it learned (reloaded on the next start). ``verify`` checks every
    file's sha256 first.

    ``offload``: the URL of an ``edgekit serve`` of the same package (or an
    :class:`OffloadConfig`) for split computing: ``bandit`` then also learns where to send
    inputs to the server (its arms become (split point, threshold) pairs), ``split:S``
    always sends the input of stage ``S``. ``offload_token`` is the server's bearer token,
    ``offload_timeout_ms`` the deadline of one request (default 1000), ``offload_ca`` a CA
    file for https. When the server is down, slow or wrong, the device answers itself.

    ``wrap_stage(k, runner)`` returns the :class:`StageRunner` to use for stage ``k`` in
    place of the interpreter's (to instrument, slow down or stub a stage); the stages then
    always run one by one. ``unsplit=False`` does that too: otherwise, when every stage
    will run anyway, one call of the package's unsplit model (cheaper) replaces them.
    Other ``policy_options`` go to the policy (e.g. ``lam``, ``save_interval_s``).
    """
    root = Path(package)
    manifest = read_manifest(root, verify=verify)
    ocfg = _offload_config(offload, offload_token, offload_timeout_ms, offload_ca)
    name = backends.auto(manifest.formats) if backend == "auto" else backend
    mod = backends.get(name)
    if backend == "auto":
        _log.info("edgekit: %s runs on %s (%s)", manifest.name, name, mod.describe())
    if mod.FORMAT not in manifest.formats:
        raise PackageError(
            f"backend {name!r} runs {mod.FORMAT} models, which this package does not have "
            f"(it has {', '.join(manifest.formats)})",
            hint="convert with --formats tflite,onnx, or pick another backend",
        )
    if isinstance(policy, str) and policy.startswith("bandit") and state is not None:
        policy_options.setdefault("state_path", str(state))
    if isinstance(policy, str):
        pol = parse_policy(policy, offload=ocfg is not None, **policy_options)
    else:
        pol = policy
    if pol.needs.offloads and ocfg is None:
        raise ValueError(f"policy {pol.describe()!r} offloads; pass offload='http://HOST:PORT'")
    client = None
    sha = manifest.sha256
    if ocfg is not None:
        n_classes = manifest.stages[-1].logits.shape[-1]
        client = OffloadClient(ocfg, manifest.name, sha, n_classes)
    runners = []
    try:
        for s in manifest.stages:
            runners.append(mod.open_stage(root / s.files[mod.FORMAT], threads))
    except Exception:
        for r in runners:
            r.close()
        raise
    full = None
    rel = manifest.full.get(mod.FORMAT)
    if wrap_stage is not None:
        runners = [wrap_stage(k, r) for k, r in enumerate(runners)]
    elif unsplit and rel is not None:
        full = mod.open_full(root / rel, len(manifest.stages), threads)
    try:
        return EdgeModel(root, manifest, name, runners, pol, confidence, full, client, sha)
    except BaseException:
        for r in runners:
            r.close()
        if full is not None:
            full.close()
        raise


def _offload_config(
    offload: str | OffloadConfig | None,
    token: str | None,
    timeout_ms: float | None,
    ca: str | None,
) -> OffloadConfig | None:
    if offload is None:
        if token is not None or timeout_ms is not None or ca is not None:
            raise ValueError("offload_token/offload_timeout_ms/offload_ca need offload=URL")
        return None
    cfg = offload if isinstance(offload, OffloadConfig) else OffloadConfig(str(offload))
    changes: dict[str, Any] = {}
    if token is not None:
        changes["token"] = token
    elif cfg.token is None and os.environ.get("EDGEKIT_OFFLOAD_TOKEN"):
        changes["token"] = os.environ["EDGEKIT_OFFLOAD_TOKEN"]
    if timeout_ms is not None:
        changes["timeout_ms"] = float(timeout_ms)
    if ca is not None:
        changes["ca_file"] = ca
    return dataclasses.replace(cfg, **changes) if changes else cfg


# Records made per input, without NamedTuple's Python-level __new__ (same tuples).
_new_tuple = _new_prediction = tuple.__new__


class EdgeModel:
    """A loaded package. ``predict`` runs stages until the policy says stop.

    Threads: every method may be called from several threads at once. Calls on one model
    are serialized by a lock (an interpreter runs one input at a time, and the policy
    learns from every input in turn), so each answer is the one a single-threaded caller
    would get for the same sequence of inputs and the stats count every call once. For
    parallel inference, load one model per thread. With a server, the lock is held during
    the offload request too (at most the offload timeout).

    A bandit's state (``state=PATH``) is saved by a background thread every
    ``save_interval_s`` seconds and on ``close``; ``predict`` never touches the disk.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        backend: str,
        runners: Sequence[StageRunner],
        policy: Policy,
        confidence: str = "max_softmax",
        full: Any = None,
        client: OffloadClient | None = None,
        package_sha256: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._autosave: Autosave | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.root = root
        self.manifest = manifest
        self.backend = backend
        self.policy = policy
        self._runners = list(runners)
        n = len(self._runners)
        self.n_exits = n
        act = np.dtype(runners[0].input_dtype).name
        stages = manifest.stages
        q0 = stages[0].input.quant
        if q0 is None:
            raise PackageError("stage 0 has no input quantization in the manifest")
        self._quant = Quantizer(manifest.input, q0.as_dtype(act))
        self._conf = []
        for s in stages:
            if s.logits.quant is None:
                raise PackageError(f"stage {s.index} has no logits quantization")
            self._conf.append(Confidence(s.logits.quant.scale, confidence))
        self._conf_one = [c.one for c in self._conf]
        self._conf_last = self._conf_one[-1]
        self._quant_one = self._quant.one
        policy.bind(n, [e.macs_fraction for e in manifest.exits], package=package_sha256)
        needs = policy.needs
        if needs.cost not in ("latency", "macs"):
            raise ValueError(f"policy {policy.describe()!r} needs cost {needs.cost!r}")
        self._needs = needs
        self._all_exits, self._cost = needs.all_exits, needs.cost
        self._select = policy.select
        self._observe = policy.observe
        # A policy that keeps Policy's empty observe (full, threshold, oracle) is told
        # nothing: the Outcome record it would ignore is not built.
        self._observes = getattr(policy.observe, "__func__", None) is not Policy.observe
        self.stats_ = Stats(n, [e.macs_fraction for e in manifest.exits])
        self._full = full
        # policy=full's path, ``_predict_unsplit`` at its shortest: one call of the unsplit
        # model for the last exit's logits, nothing else asked (no server, no exit's
        # confidence but the last one, no credit to an earlier exit).
        self._lean = not (needs.confidences or needs.all_exits or needs.offloads)
        self._run_all = (NEVER,) * n
        self._confs = [0.0] * n
        self._labels = [0] * n
        self._last = n - 1
        # Only a policy that may offload talks to the server; others run as without one.
        self._server = client
        self._client = client if needs.offloads else None
        # The quantization of each stage's input, as this backend's tensors carry it.
        self._stage_q: list[QuantParams] = []
        for s in stages:
            q = s.input.quant
            if q is None:
                raise PackageError(f"stage {s.index} has no input quantization in the manifest")
            self._stage_q.append(q.as_dtype(act))
        # A name per class id (None past the manifest's labels), so lookups never branch.
        n_classes = manifest.stages[-1].logits.shape[-1]
        self._names = [
            manifest.labels[i] if i < len(manifest.labels) else None
            for i in range(max(n_classes, len(manifest.labels)))
        ]
        # The stage loop on the interpreters' own buffers, for a policy that decides by
        # thresholds alone on this device (no server, no exit run for evaluation's sake).
        self._by_thresholds = not (self._lean or needs.all_exits or needs.offloads)
        self._lends_stages = False  # the stage runners' buffers are held by self._run
        self._run: Callable[[Any], Prediction] = self._pick_run()
        if policy.persists:
            interval = getattr(getattr(policy, "config", None), "save_interval_s", 30.0)
            self._autosave = Autosave(policy.checkpoint, self._lock, interval)
            # Saved at exit (or when collected) even if nobody calls close().
            self._finalizer = weakref.finalize(self, self._autosave.close)

    # -- inference ----------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> Prediction:
        """Classify one image: uint8 pixels, or float scaled like the training data, of
        shape (H, W, C), (1, H, W, C), or (H, W) for one channel. Raises
        :class:`InputError` for any other shape or dtype and for NaN or infinite values."""
        with self._lock:
            if self._closed:
                raise _closed_error()
            return self._run(x)

    def _predict(self, x: np.ndarray) -> Prediction:
        client = self._client
        ready = client is not None and client.ready()
        th, split = self._select(ready)
        return self._decided(x, th, split, ready)

    def _decided(
        self, x: np.ndarray, th: Sequence[float], split: int | None, ready: bool
    ) -> Prediction:
        """Run one input as the policy decided."""
        if split is None and self._full is not None and th == self._run_all:
            if self._lean:
                return self._predict_final(x)
            return self._predict_unsplit(x)
        t0 = perf_counter()
        h: Any = self._quant_one(x if type(x) is np.ndarray else np.asarray(x))
        if split is None:
            k, _ = self._stages(h, 0, self.n_exits, th)
            return self._local(t0, k, k, th)
        k, h = self._stages(h, 0, split, th)
        if k >= 0:  # stopped early, before the split point
            return self._local(t0, k, k, th)
        return self._offload(t0, split, h, th, ready)

    def _stages(
        self, h: Any, k: int, end: int, th: Sequence[float]
    ) -> tuple[int, np.ndarray | None]:
        """The stage loop: run stages ``k..end-1`` until an exit's confidence reaches its
        threshold (the last exit always answers). Returns (that exit, None), or (-1, the
        input of stage ``end``) when none stopped."""
        runners, conf, confs, labels = self._runners, self._conf_one, self._confs, self._labels
        marks = self.stats_.marks
        last, run_all, skip = self._last, self._all_exits, not self._needs.confidences
        while k < end:
            feats, logits = runners[k](h)
            if k == last:
                labels[k], confs[k] = conf[k](logits)
                marks[k] = perf_counter()
                return k, None
            t = th[k]
            if skip and t == NEVER:  # nothing to decide here, and nobody asked
                marks[k] = perf_counter()
            else:
                labels[k], c = conf[k](logits)
                confs[k] = c
                marks[k] = perf_counter()
                if c >= t and not run_all:
                    return k, None
            h = feats
            k += 1
        return -1, h

    def _local(self, t0: float, k: int, exit_k: int, th: Sequence[float]) -> Prediction:
        """Count, tell the policy and answer for an input that stopped at exit ``k``."""
        if self._all_exits:
            exit_k = self._credit(k)
        stats = self.stats_
        costs = stats.record(t0, k, exit_k, self._cost)
        seconds = stats.marks[k] - t0
        ms = seconds * 1e3
        if self._observes:
            self._observe(
                _new_tuple(Outcome, (k, self._confs, costs, costs[exit_k], ms, None, None))
            )
        lab = self._labels[exit_k]
        return _new_prediction(
            Prediction,
            (lab, self._confs[exit_k], exit_k, k + 1, ms, False, self._names[lab], None),
        )

    def _pick_run(self) -> Callable[[Any], Prediction]:
        """The function ``predict`` calls: a short path of local names where the policy
        and the backend allow one (the unsplit model's seam is open, i.e. no
        ``wrap_stage`` and ``unsplit=True``), else the general ``_predict``."""
        self._lends_stages = False
        if self._full is None:
            return self._predict
        if self._lean:
            return self._lean_run()
        if self._by_thresholds:
            run = self._staged_run()
            if run is not None:
                self._lends_stages = True
                return run
        return self._predict

    def _staged_run(self) -> Callable[[Any], Prediction] | None:
        """``_predict`` for a policy that decides by thresholds alone (the bandit,
        ``threshold``) as one function of local names, on the stages' own buffers.

        The same work as ``_predict`` -> ``_decided`` -> ``_stages`` -> ``_local``, where
        every stage runner lends its buffers (``TFLiteStage.views``): the image is
        written straight into stage 0's input, each exit's confidence is read from its
        logits where they are, and a stage's features are copied straight into the next
        stage's input (no set_tensor, no get_tensor, no array per stage). A decision to
        run every stage (the unsplit model answers) or to offload goes the general way.
        None when a runner lends no buffers or they do not chain (shapes or types differ).
        """
        views = []
        for r in self._runners:
            v: Any = r.views() if hasattr(r, "views") else None
            if v is None:
                return None
            views.append(v)
        quant = self._quant
        vin0 = views[0][0][0]
        if vin0.dtype != quant.dtype or vin0.shape != quant.shape:
            return None
        steps: list[tuple[Callable[[], Any], Callable[[], tuple[int, float]], Any, Any]] = []
        for k, (_, feats, logits, invoke) in enumerate(views):
            nxt = views[k + 1][0] if k < self._last else None
            if (nxt is None) != (feats is None):
                return None
            if nxt is not None and (
                nxt.shape != feats.shape
                or nxt.dtype != feats.dtype
                or not (nxt.flags.c_contiguous and feats.flags.c_contiguous)
            ):
                return None
            # The features' bytes, copied as bytes: a memoryview slice assignment is one
            # memcpy (0.5 us less per stage than ``nxt[...] = feats``). Both buffers are
            # the interpreters' own contiguous tensors of one shape and type.
            src = None if feats is None else memoryview(feats).cast("B")
            dst = None if nxt is None else memoryview(nxt).cast("B")
            steps.append((invoke, self._conf[k].reader(logits), src, dst))
        del views
        select, run_all, general, local = self._select, self._run_all, self._decided, self._local
        write = quant.into(vin0)  # checks the image and quantizes it into place
        marks, labels, confs = self.stats_.marks, self._labels, self._confs
        clock = perf_counter

        def run_staged(x: Any) -> Prediction:
            th, split = select(False)
            if split is not None or th == run_all:
                return general(x, th, split, False)
            t0 = clock()
            write(x)
            k = 0
            for invoke, read, feats, nxt in steps:
                invoke()
                lab, c = read()
                marks[k] = clock()
                labels[k] = lab
                confs[k] = c
                if c >= th[k] or nxt is None:
                    break
                nxt[:] = feats
                k += 1
            return local(t0, k, k, th)

        return run_staged

    def _lean_run(self) -> Callable[[Any], Prediction]:
        """``_predict`` for a lean policy (``full``) as one function of local names.

        The same work as ``_predict`` -> ``_predict_final``, without their frames and
        attribute lookups, and, where the backend lends them (``TFLiteFull.views``), with
        the image written straight into the interpreter's input and the logits read where
        they are. After an invoke every Python step runs on cold caches: on a server CPU
        the general path costs 10-20 us next to a 120-190 us invoke. Any other decision
        of the policy goes the general way.
        """
        select, run_all, general = self._select, self._run_all, self._decided
        quant = self._quant
        one = quant.one
        full: Any = self._full
        views = full.views() if hasattr(full, "views") else None
        if views is not None and views[0].dtype != quant.dtype:
            views = None
        conf, record, names, mode = (
            self._conf_last,
            self.stats_.record_unsplit,
            self._names,
            self._cost,
        )
        last, labels, confs = self._last, self._labels, self._confs
        observe = self._observe if self._observes else None
        ndarray, clock = np.ndarray, perf_counter

        def done(t0: float, lab: int, c: float) -> Prediction:
            seconds = clock() - t0
            labels[last] = lab
            confs[last] = c
            costs = record(seconds, last, mode)
            ms = seconds * 1e3
            if observe is not None:
                observe(_new_tuple(Outcome, (last, confs, costs, costs[last], ms, None, None)))
            return _new_prediction(
                Prediction, (lab, c, last, last + 1, ms, False, names[lab], None)
            )

        if views is None:  # the interpreter's calls, on the quantizer's buffer
            final = full.final

            def run(x: Any) -> Prediction:
                th, split = select(False)
                if split is not None or th != run_all:
                    return general(x, th, split, False)
                t0 = clock()
                lab, c = conf(final(one(x if type(x) is ndarray else np.asarray(x))))
                return done(t0, lab, c)

            return run
        vin, vout, invoke = views
        write, read = quant.into(vin), self._conf[last].reader(vout)

        def run_in_place(x: Any) -> Prediction:
            th, split = select(False)
            if split is not None or th != run_all:
                return general(x, th, split, False)
            t0 = clock()
            write(x)  # checks the image and quantizes it into the interpreter's input
            invoke()
            lab, c = read()
            return done(t0, lab, c)

        return run_in_place

    def _predict_final(self, x: np.ndarray) -> Prediction:
        """``_predict_unsplit`` for a policy that asks only for the answer (``full``):
        the work around the interpreter's one call is quantize, one confidence, count."""
        t0 = perf_counter()
        full: Any = self._full
        lab, c = self._conf_last(
            full.final(self._quant_one(x if type(x) is np.ndarray else np.asarray(x)))
        )
        seconds = perf_counter() - t0
        last = self._last
        self._labels[last] = lab
        confs = self._confs
        confs[last] = c
        costs = self.stats_.record_unsplit(seconds, last, self._cost)
        ms = seconds * 1e3
        if self._observes:
            self._observe(_new_tuple(Outcome, (last, confs, costs, costs[last], ms, None, None)))
        return _new_prediction(
            Prediction, (lab, c, last, last + 1, ms, False, self._names[lab], None)
        )

    def _predict_unsplit(self, x: np.ndarray) -> Prediction:
        """When every stage will run anyway, one call of the unsplit model is cheaper."""
        t0 = perf_counter()
        h = self._quant_one(x if type(x) is np.ndarray else np.asarray(x))
        labels, confs, last = self._labels, self._confs, self._last
        full: Any = self._full
        if self._needs.confidences:
            conf = self._conf_one
            for k, lg in enumerate(full(h)):
                labels[k], confs[k] = conf[k](lg)
        else:
            labels[last], confs[last] = self._conf_last(full.final(h))
        seconds = perf_counter() - t0
        exit_k = self._credit(last) if self._all_exits else last
        costs = self.stats_.record_unsplit(seconds, exit_k, self._cost)
        ms = seconds * 1e3
        if self._observes:
            self._observe(_new_tuple(Outcome, (last, confs, costs, costs[exit_k], ms, None, None)))
        lab = labels[exit_k]
        return _new_prediction(
            Prediction, (lab, confs[exit_k], exit_k, last + 1, ms, False, self._names[lab], None)
        )

    def _offload(self, t0: float, s: int, h: Any, th: Sequence[float], ready: bool) -> Prediction:
        """Send the input of stage ``s`` to the server; when that fails, carry on here
        from the features already computed (no input is lost)."""
        client = self._client
        assert client is not None
        stats, mode, last, confs = self.stats_, self._needs.cost, self._last, self._confs
        t_send = perf_counter()
        res = client.infer(s, h, self._stage_q[s]) if ready else None
        if res is not None and not isinstance(res, OffloadFailure):
            seconds = perf_counter() - t0
            costs, paid = stats.record_offload(t0, s, seconds, s, res.bytes_sent, res.rtt_s, mode)
            ms = seconds * 1e3
            self._observe(Outcome(s - 1, confs, costs, paid, ms, s, res.confidence))
            info = OffloadInfo(s, res.bytes_sent, res.rtt_s * 1e3)
            return Prediction(
                res.label, res.confidence, last, s, ms, True, self._names[res.label], info
            )
        if res is None:
            client.skipped += 1
            res = OffloadFailure("open", "the circuit breaker is open", 0, 0.0)
        gap = perf_counter() - t_send
        k, _ = self._stages(h, s, self.n_exits, th)
        costs, paid = stats.record_fallback(t0, k, k, s, gap, res.bytes_sent, mode)
        ms = (stats.marks[k] - t0) * 1e3
        self._observe(Outcome(k, confs, costs, paid, ms, s, None))
        lab = self._labels[k]
        info = OffloadInfo(s, res.bytes_sent, res.rtt_s * 1e3, True, f"{res.kind}: {res.message}")
        return Prediction(lab, confs[k], k, k + 1, ms, False, self._names[lab], info)

    def _credit(self, k: int) -> int:
        """For a policy that runs every exit (the oracle): the earliest exit run that
        agrees with the last one."""
        final = self._labels[k]
        return next(i for i in range(k + 1) if self._labels[i] == final)

    def predict_batch(self, xs: np.ndarray | Iterable[np.ndarray]) -> list[Prediction]:
        """Classify a batch, one input at a time (the policy learns as it goes)."""
        return [self.predict(x) for x in xs]

    def run_all_exits(self, xs: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidences) of every exit for every input: arrays of shape (N, exits).

        Runs each stage on whole batches (for evaluation and recording, not per input).
        """
        with self._lock:
            if self._closed:
                raise _closed_error()
            return self._run_all_exits(xs, batch)

    def _run_all_exits(self, xs: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._lends_stages:
            return self._batches(xs, batch)
        self._run = self._predict  # let go of the stages' buffers: they are resized here
        try:
            return self._batches(xs, batch)
        finally:
            self._run = self._pick_run()  # back at batch 1, lent again

    def _batches(self, xs: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(xs)
        labels = np.zeros((n, self.n_exits), np.int64)
        confs = np.zeros((n, self.n_exits), np.float64)
        for i in range(0, n, batch):
            h: Any = self._quant.batch(np.asarray(xs[i : i + batch]))
            for k, run in enumerate(self._runners):
                feats, logits = run(h)
                lab, c = self._conf[k].batch(logits)
                labels[i : i + len(h), k] = lab
                confs[i : i + len(h), k] = c
                h = feats
        return labels, confs

    def quantize(self, xs: np.ndarray) -> np.ndarray:
        """Images (N, H, W, C) -> the 8-bit input tensors of stage 0, (N, H, W, C)."""
        with self._lock:
            return self._quant.batch(np.asarray(xs))

    def stage_latency_ms(self, xs: np.ndarray, n: int = 300) -> np.ndarray:
        """Median latency (ms) of each stage at batch 1 with its confidence, measured on
        the first ``n`` of ``xs`` (each stage on the previous stage's real output)."""
        with self._lock:
            if self._closed:
                raise _closed_error()
            runners, conf = self._runners, self._conf_one
            times = np.zeros((min(n, len(xs)), len(runners)))
            for i in range(len(times)):
                h: Any = self._quant.one(np.asarray(xs[i]))
                for k, run in enumerate(runners):
                    t0 = perf_counter()
                    feats, logits = run(h)
                    conf[k](logits)
                    times[i, k] = perf_counter() - t0
                    h = feats
            return np.asarray(np.median(times, axis=0) * 1e3)

    # -- bookkeeping -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Exit histogram, latency percentiles (ms), mean cost and the policy's arm values."""
        with self._lock:
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        out = self.stats_.summary()
        out["backend"] = self.backend
        out["policy"] = self.policy.describe()
        arms = self.policy.arm_values()
        if arms:
            out["arms"] = arms
        if self._server is not None:
            out["offload"] = {**self.stats_.offload_summary(), **self._server.stats()}
        return out

    def feedback(self, prediction: Prediction, label: int) -> None:
        """Tell the policy the true label of an earlier prediction."""
        with self._lock:
            self.policy.feedback(prediction.label == label, prediction.exit)

    def save_state(self) -> None:
        """Save the policy's learned state now (it is also saved periodically and on close)."""
        if self._autosave is not None:
            self._autosave.save()

    def close(self) -> None:
        """Save the policy's state and release the interpreters (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()  # stops the autosave thread and saves (takes the lock)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._server is not None:
                self._server.close()
            self._run = self._predict  # drops the lean path's hold on the interpreter
            for r in self._runners:
                r.close()
            self._runners = []
            if self._full is not None:
                self._full.close()
                self._full = None

    def __enter__(self) -> EdgeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<EdgeModel {self.manifest.name}: {self.n_exits} exits, backend={self.backend}, "
            f"policy={self.policy.describe()}>"
        )


def _closed_error() -> ModelClosedError:
    return ModelClosedError(
        "this model was closed", hint="load the package again with edgekit.load(...)"
    )
