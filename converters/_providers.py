"""Which ONNX Runtime execution provider runs each node of an ONNX file.

A session can be asked for its providers, but not which of them took which node: TensorRT
or CUDA may take part of a graph and leave the rest to the CPU. ORT's profiler records the
provider of every kernel it runs, so one profiled inference on zeros answers it.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, require

__all__ = ["node_providers", "provider_summary"]

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def node_providers(
    path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> dict[str, str]:
    """Node name -> the execution provider that ran it, from one profiled run on zeros.

    Names are those of the graph ORT runs, after its optimisation (fused nodes get new ones).

    ``providers``: in ORT's order of preference, as for ``InferenceSession``. Free
    dimensions (the batch) are taken as 1.
    """
    ort = require("onnxruntime", "convert", purpose="per-node provider report")
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        try:
            sess = ort.InferenceSession(str(path), so, providers=list(providers))
            feeds = {}
            for i in sess.get_inputs():
                if i.type not in _NP_TYPES:
                    raise ConversionError(f"{path.name}: input {i.name!r} has type {i.type}")
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
                feeds[i.name] = np.zeros(shape, _NP_TYPES[i.type])
            sess.run(None, feeds)
            trace = json.loads(Path(sess.end_profiling()).read_text())
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(
                f"could not profile {path.name} with {list(providers)}: {exc}",
                hint="check that the providers are installed "
                "(onnxruntime.get_available_providers())",
            ) from exc
    out: dict[str, str] = {}
    for ev in trace:
        args: Mapping[str, Any] = ev.get("args") or {}
        if ev.get("cat") == "Node" and "provider" in args:
            name = str(ev.get("name", "")).removesuffix("_kernel_time")
            out.setdefault(name, str(args["provider"]))
    return out


def provider_summary(nodes: Mapping[str, str]) -> dict[str, int]:
    """Provider -> how many nodes it ran, most first."""
    return dict(Counter(nodes.values()).most_common())
