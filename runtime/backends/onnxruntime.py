"""onnxruntime, with the best execution providers present (TensorRT, CUDA, then CPU)."""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "onnx"
EXTRA = "onnx"
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_TRT, _CUDA, _CPU = _PREFERRED
_log = logging.getLogger("edgekit.runtime")
_USED: dict[str, str] = {}  # "onnx/stage_K.onnx" -> the provider that runs it, as opened


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def describe() -> str:
    if not available():
        return "onnxruntime (not installed)"
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} ({', '.join(providers())})"


def providers() -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in _PREFERRED if p in have]


def state_dir(path: Path) -> Path:
    """Where TensorRT keeps its engine and timing caches for the package holding ``path``.

    ``EDGEKIT_STATE_DIR`` wins; a package deployed by ``edgekit push``
    (``ROOT/NAME/releases/RID``) uses ``ROOT/NAME/state``, which outlives its releases;
    anything else the user cache (``~/.cache/edgekit``). TensorRT keys engines by model
    and GPU, so one folder serves every stage.
    """
    env = os.environ.get("EDGEKIT_STATE_DIR")
    if env:
        return Path(env) / "tensorrt"
    pkg = Path(path).resolve().parent.parent  # PKG/onnx/stage_K.onnx
    if pkg.parent.name == "releases":
        return pkg.parent.parent / "state" / "tensorrt"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgekit" / "tensorrt"


def provider_options(
    available: Sequence[str], cache: Path, *, int8: bool, fp16: bool = True
) -> list[str | tuple[str, dict[str, str]]]:
    """The ``providers`` argument of ``InferenceSession``: best first, with options.

    TensorRT gets INT8 (an explicitly quantized, Q/DQ, file) and FP16 (for the layers
    left in float; ``EDGEKIT_TRT_FP16=0`` turns it off) and persistent engine and timing
    caches under ``cache``, so a device builds its engines once, not at every start.
    """
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in _PREFERRED:
        if name not in available:
            continue
        if name == _TRT:
            opts = {"trt_int8_enable": str(int8), "trt_fp16_enable": str(fp16)}
            opts.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(cache / "engines"),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(cache / "timing"),
            )
            out.append((name, opts))
        elif name == _CUDA:
            out.append((name, {"device_id": "0"}))
        else:
            out.append(name)
    return out


def _session(path: Path, threads: int | None) -> Any:
    """An ``InferenceSession`` on the best providers, saying which one runs the file."""
    import onnxruntime as ort

    have = providers()
    chosen: list[str | tuple[str, dict[str, str]]] = list(have)
    if _TRT in have or _CUDA in have:
        cache = state_dir(path)
        try:
            (cache / "engines").mkdir(parents=True, exist_ok=True)
            (cache / "timing").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _log.warning("edgekit: TensorRT caches disabled (%s is not writable: %s)", cache, exc)
            have = [p for p in have if p != _TRT]
        with open(path, "rb") as f:
            int8 = b"DequantizeLinear" in f.read()
        fp16 = os.environ.get("EDGEKIT_TRT_FP16", "1") != "0"
        chosen = provider_options(have, cache, int8=int8, fp16=fp16)
    sess = ort.InferenceSession(str(path), session_options(threads), providers=chosen)
    used = list(sess.get_providers())
    key = f"{Path(path).parent.name}/{Path(path).name}"
    _USED[key] = used[0] if used else "?"
    _log.info("edgekit: %s runs on %s (session providers: %s)", key, _USED[key], ", ".join(used))
    return sess


def stage_providers() -> dict[str, str]:
    """Which execution provider runs each ONNX file opened so far (for ``edgekit bench``)."""
    return dict(_USED)


_Run = Callable[[list[str], dict[str, Any], None], list[Any]]


def _runner(session: Any) -> _Run:
    """``run(names, feed, None)`` of ``session``, as cheap per call as onnxruntime allows.

    ``InferenceSession.run`` checks the feed's names, the graph-capture mode and the
    ownership of OrtValues on every call, then calls the compiled session (about 1 us, next
    to INT8 stages of 30-100 us). A stage's feed is always its one input ``input``, checked
    here once, so a session on the CPU provider alone is called directly. Any other
    provider keeps the public ``run``, which also falls back to the CPU when a GPU provider
    fails.
    """
    inner = getattr(session, "_sess", None)
    names = [i.name for i in session.get_inputs()]
    if inner is not None and names == ["input"] and session.get_providers() == [_CPU]:
        direct: _Run = inner.run
        return direct
    run: _Run = session.run
    return run


class OnnxStage:
    """A stage in an ``InferenceSession``; outputs fetched by name in a fixed order."""

    __slots__ = ("_feed", "_names", "_pair", "_run", "input_dtype", "session")

    def __init__(self, session: Any) -> None:
        self.session = session
        outs = {o.name for o in session.get_outputs()}
        self._pair = "ek_features" in outs
        self._names = ["ek_features", "ek_logits"] if self._pair else ["ek_logits"]
        itype = session.get_inputs()[0].type  # "tensor(uint8)"
        self.input_dtype = np.dtype(itype[len("tensor(") : -1])
        self._run = _runner(session)
        self._feed: dict[str, np.ndarray] = {}

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        self._feed["input"] = x
        res = self._run(self._names, self._feed, None)
        return (res[0], res[1]) if self._pair else (None, res[0])

    def close(self) -> None:
        self.session = None


def _x86_without_vnni() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return True
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni"))


def session_options(threads: int | None = None) -> Any:
    """Session options edgekit uses everywhere it runs INT8 ONNX.

    On x86 CPUs without VNNI, ORT's fast U8S8 kernels add pairs of u8*s8 products in
    saturating 16-bit lanes, which full 8-bit weights overflow (measured: 96.8% top-1
    agreement with TFLite instead of 99.6%). ``session.x64quantprecision`` selects the
    exact kernels there.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if _x86_without_vnni():
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


class OnnxFull:
    """The unsplit model: one run returns every exit's logits."""

    __slots__ = ("_feed", "_final", "_names", "_run", "session")

    def __init__(self, session: Any, n_exits: int) -> None:
        self.session = session
        self._names = [f"exit_{k}" for k in range(n_exits)]
        self._final = self._names[-1:]
        self._run = _runner(session)
        self._feed: dict[str, np.ndarray] = {}

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._feed["input"] = x
        return list(self._run(self._names, self._feed, None))

    def final(self, x: np.ndarray) -> np.ndarray:
        self._feed["input"] = x
        return self._run(self._final, self._feed, None)[0]

    def close(self) -> None:
        self.session = None


def open_full(path: Path, n_exits: int, threads: int | None = None) -> OnnxFull:
    return OnnxFull(_session(path, threads), n_exits)


def open_stage(path: Path, threads: int | None = None) -> OnnxStage:
    return OnnxStage(_session(path, threads))


class OnnxBackend:
    """onnxruntime sessions with :func:`session_options` and the best providers."""

    name = "onnxruntime"
    FORMAT = FORMAT
    EXTRA = EXTRA

    def available(self) -> bool:
        return available()

    def describe(self) -> str:
        return describe()

    def open_stage(self, path: Path, threads: int | None = None) -> OnnxStage:
        return open_stage(path, threads)

    def open_full(self, path: Path, n_exits: int, threads: int | None = None) -> OnnxFull | None:
        return open_full(path, n_exits, threads)


BACKEND = OnnxBackend()
