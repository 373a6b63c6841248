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

from ._tflite_common import TFLiteStage

FORMAT = "tflite"
EXTRA = "litert"
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


def available() -> bool:
    has_interp = any(
        importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime")
    )
    return has_interp and _library() is not None and _device_present()


def describe() -> str:
    if _library() is None:
        return "Edge TPU: libedgetpu not found (install libedgetpu1-std from Coral's repository)"
    if not _device_present():
        return "Edge TPU: libedgetpu found but no /dev/apex_* or USB Coral"
    return "Edge TPU (libedgetpu delegate)"


def open_stage(path: Path, threads: int | None = None) -> TFLiteStage:
    compiled = path.with_name(path.stem + "_edgetpu.tflite")
    if not compiled.is_file():
        raise FileNotFoundError(
            f"{compiled.name} is missing: the Edge TPU needs stages compiled with "
            "edgetpu_compiler; run it on the package's tflite/stage_K.tflite files"
        )
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    except ImportError:
        from tflite_runtime.interpreter import Interpreter, load_delegate
    delegate = load_delegate(_LIB)
    return TFLiteStage(
        Interpreter(
            model_path=str(compiled), num_threads=threads, experimental_delegates=[delegate]
        )
    )
