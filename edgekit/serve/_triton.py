"""``edgekit export triton``: the tails as a Triton Inference Server model repository.

One model per split point ``s``: the ONNX stages ``s..N-1`` chained into one graph that
ends like ``edgekit serve`` answers (``logits``: the last exit's dequantized logits, FP32
``[B, C]``; ``confidence``: their max softmax, FP32 ``[B]``), with a ``config.pbtxt`` for
the ``onnxruntime_onnx`` platform and dynamic batching.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import OutputExistsError, PackageError, require
from edgekit._kserve import CONFIDENCE, INPUT, LOGITS, model_name
from edgekit._package import Manifest, read_manifest
from edgekit._progress import say

__all__ = ["TritonExport", "export_triton", "tail_onnx"]

_TYPES = {2: "TYPE_UINT8", 3: "TYPE_INT8"}  # onnx.TensorProto.UINT8 / INT8


@dataclass(frozen=True)
class TritonExport:
    """Where the repository is and the models written into it."""

    root: Path
    models: tuple[str, ...]


def tail_onnx(root: Path, manifest: Manifest, split: int) -> Any:
    """Stages ``split..N-1`` as one ONNX model: 8-bit ``input`` -> FP32 ``logits`` and
    ``confidence`` (batch dimension free)."""
    onnx = require("onnx", "serve", purpose="edgekit export triton")
    from onnx import TensorProto, compose, helper, numpy_helper

    stages = manifest.stages[split:]
    if any("onnx" not in s.files for s in stages):
        raise PackageError(
            "the package has no ONNX stages; Triton's onnxruntime backend needs them",
            hint="convert with --formats tflite,onnx",
        )
    last_q = manifest.stages[-1].logits.quant
    if last_q is None:
        raise PackageError("the last stage has no logits quantization in the manifest")
    nodes: list[Any] = []
    inits: list[Any] = []
    infos: list[Any] = []
    prev = INPUT
    first: Any = None
    last: Any = None
    opsets: Any = None
    logits_q = ""
    for st in stages:
        m = last = onnx.load(str(root / st.files["onnx"]))
        if first is None:
            first, opsets = m, m.opset_import
        g = compose.add_prefix(m, prefix=f"s{st.index}/").graph
        nodes.append(helper.make_node("Identity", [prev], [g.input[0].name]))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        infos.extend(g.value_info)
        prev = f"s{st.index}/ek_features"
        logits_q = f"s{st.index}/ek_logits"
    out_type = next(
        o for o in last.graph.output if o.name == "ek_logits"
    ).type.tensor_type.elem_type
    zp_dtype = "uint8" if out_type == TensorProto.UINT8 else "int8"
    zp = last_q.as_dtype(zp_dtype).zero_point
    inits.append(numpy_helper.from_array(np.array(last_q.scale, np.float32), "ek/logits_scale"))
    inits.append(numpy_helper.from_array(np.array(zp, zp_dtype), "ek/logits_zero_point"))
    nodes.append(
        helper.make_node(
            "DequantizeLinear", [logits_q, "ek/logits_scale", "ek/logits_zero_point"], [LOGITS]
        )
    )
    nodes.append(helper.make_node("Softmax", [LOGITS], ["ek/probs"], axis=1))
    nodes.append(helper.make_node("ReduceMax", ["ek/probs"], [CONFIDENCE], axes=[1], keepdims=0))
    nodes = _prune(nodes, {LOGITS, CONFIDENCE})
    used = {i for n in nodes for i in n.input}
    in_t = first.graph.input[0].type.tensor_type
    dims = ["batch", *[d.dim_value for d in in_t.shape.dim[1:]]]
    n_classes = manifest.stages[-1].logits.shape[-1]
    graph = helper.make_graph(
        nodes,
        f"{manifest.name}_split{split}",
        [helper.make_tensor_value_info(INPUT, in_t.elem_type, dims)],
        [
            helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", n_classes]),
            helper.make_tensor_value_info(CONFIDENCE, TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[t for t in inits if t.name in used],
        value_info=[v for v in infos if v.name in used],
    )
    model = helper.make_model(graph, opset_imports=list(opsets), producer_name="edgekit")
    model.ir_version = first.ir_version
    onnx.checker.check_model(model)
    return model


def _prune(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """Only the nodes the outputs depend on (the early exits' heads drop out)."""
    need = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    return keep[::-1]


def _config(
    name: str,
    input_type: str,
    input_dims: list[int],
    n_classes: int,
    max_batch: int,
    max_delay_ms: float,
    params: dict[str, str],
) -> str:
    dims = ", ".join(str(d) for d in input_dims)
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        f'    name: "{INPUT}"',
        f"    data_type: {input_type}",
        f"    dims: [ {dims} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{LOGITS}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {n_classes} ]",
        "  },",
        "  {",
        f'    name: "{CONFIDENCE}"',
        "    data_type: TYPE_FP32",
        "    dims: [ 1 ]",
        "    reshape: { shape: [ ] }",
        "  }",
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {round(max_delay_ms * 1000)}",
        "}",
        "instance_group [ { kind: KIND_CPU, count: 1 } ]",
        "# ORT's fused int8 kernels saturate on 8-bit weights on x86 CPUs without VNNI;",
        "# basic graph optimizations keep the QDQ path (within one logits step of",
        "# `edgekit serve`). Drop this block on VNNI CPUs or GPUs for the fused kernels.",
        "optimization { graph: { level: -1 } }",
    ]
    for k, v in params.items():
        lines.append(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}')
    return "\n".join(lines) + "\n"


def export_triton(
    package: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_batch: int = 32,
    max_delay_ms: float = 2.0,
    force: bool = False,
    verbose: bool = True,
) -> TritonExport:
    """Write ``out/{name}-split{s}/{config.pbtxt, 1/model.onnx}`` for every split point."""
    onnx = require("onnx", "serve", purpose="edgekit export triton")
    root = Path(package)
    manifest = read_manifest(root, verify=True)
    repo = Path(out)
    names = [model_name(manifest.name, s) for s in range(len(manifest.stages))]
    clash = [n for n in names if (repo / n).exists()]
    if clash and not force:
        raise OutputExistsError(
            f"{repo} already has {', '.join(clash)}",
            hint="pass --force to replace them, or another --out",
            path=str(repo),
        )
    repo.mkdir(parents=True, exist_ok=True)
    digest = manifest.sha256
    for s, name in enumerate(names):
        model = tail_onnx(root, manifest, s)
        q = manifest.stages[s].input.quant
        in_t = model.graph.input[0].type.tensor_type
        input_type = _TYPES.get(in_t.elem_type)
        if q is None or input_type is None:
            raise PackageError(f"stage {s}'s input is not an 8-bit quantized tensor")
        q = q.as_dtype("uint8" if input_type == "TYPE_UINT8" else "int8")
        params = {
            "edgekit_package": manifest.name,
            "edgekit_package_sha256": digest,
            "edgekit_split": str(s),
            "edgekit_input_scale": repr(q.scale),
            "edgekit_input_zero_point": str(q.zero_point),
        }
        cfg = _config(
            name,
            input_type,
            [d.dim_value for d in in_t.shape.dim[1:]],
            manifest.stages[-1].logits.shape[-1],
            max_batch,
            max_delay_ms,
            params,
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
        try:
            (tmp / "1").mkdir()
            onnx.save(model, str(tmp / "1" / "model.onnx"))
            (tmp / "config.pbtxt").write_text(cfg)
            if (repo / name).exists():
                shutil.rmtree(repo / name)
            os.replace(tmp, repo / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if verbose:
            say(f"triton: {name} (stages {s}..{len(names) - 1}, input {input_type})")
    return TritonExport(repo, tuple(names))
