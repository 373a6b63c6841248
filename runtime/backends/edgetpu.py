"""Google Coral Edge TPU: the TFLite interpreter with the ``libedgetpu`` delegate.

The Edge TPU runs only models compiled for it by ``edgetpu_compiler``; a package carries
those as ``tflite/stage_K_edgetpu.tflite``. Without them this backend refuses the package
rather than silently running everything on the CPU.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
from pathlib import Path
from typing import Any

from ._tflite_common import TFLiteBackend, TFLiteFull, TFLiteStage

_LIB = "libedgetpu.so.1"


def _library() -> str | None:
    if ctypes.util.find_library("edgetpu"):
        return _LIB
    for d in ("/usr/lib", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
        if glob.glob(f"{d}/{_LIB}*"):
            return _LIB
    return None


def _device_present() -> bool:
    return bool(glob.glob("/dev/apex_*")) or _usb_coral()


def _usb_coral() -> bool:
    # Global Unichip (1a6e) before first use, Google (18d1:9302) after.
    for vendor in glob.glob("/sys/bus/usb/devices/*/idVendor"):
        try:
            if Path(vendor).read_text().strip() in ("1a6e", "18d1"):
                return True
        except OSError:
            continue
    return False


def _interpreter() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


class EdgeTPUBackend(TFLiteBackend):
    """The shared TFLite backend, on stages compiled for the Edge TPU, with its delegate."""

    def available(self) -> bool:
        has_interp = any(
            importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime")
        )
        return has_interp and _library() is not None and _device_present()

    def describe(self) -> str:
        if _library() is None:
            return (
                "Edge TPU: libedgetpu not found (install libedgetpu1-std from Coral's repository)"
            )
        if not _device_present():
            return "Edge TPU: libedgetpu found but no /dev/apex_* or USB Coral"
        return "Edge TPU (libedgetpu delegate)"

    def open_stage(self, path: Path, threads: int | None = None) -> TFLiteStage:
        compiled = path.with_name(path.stem + "_edgetpu.tflite")
        if not compiled.is_file():
            raise FileNotFoundError(
                f"{compiled.name} is missing: the Edge TPU needs stages compiled with "
                "edgetpu_compiler; run it on the package's tflite/stage_K.tflite files"
            )
        try:
            from ai_edge_litert.interpreter import load_delegate
        except ImportError:
            from tflite_runtime.interpreter import load_delegate
        delegate = load_delegate(_LIB)
        return TFLiteStage(
            _interpreter()(
                model_path=str(compiled), num_threads=threads, experimental_delegates=[delegate]
            )
        )

    def open_full(self, path: Path, n_exits: int, threads: int | None = None) -> TFLiteFull | None:
        return None  # the unsplit model is not compiled for the Edge TPU: stages only


BACKEND = EdgeTPUBackend("edgetpu", "ai_edge_litert", "litert", "Edge TPU", _interpreter)
FORMAT, EXTRA = BACKEND.FORMAT, BACKEND.EXTRA
available, describe = BACKEND.available, BACKEND.describe
open_stage, open_full = BACKEND.open_stage, BACKEND.open_full
