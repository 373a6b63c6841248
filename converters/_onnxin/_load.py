"""Reading an exported ONNX classifier: checks, external data, final Softmax, layout and
input normalisation (options first, then the model's ``metadata_props``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit._errors import ConversionError, require

__all__ = ["MAX_OPSET", "MIN_OPSET", "OnnxSource", "load_onnx"]

MIN_OPSET, MAX_OPSET = 13, 21
_FLOAT = 1  # onnx.TensorProto.FLOAT
_EXPORT_HINT = "export it with torch.onnx.export(model, example, 'model.onnx')"


@dataclass(frozen=True)
class OnnxSource:
    """An ONNX classifier ready for intake.

    ``proto`` holds every weight in memory, batch dimension free, with a final Softmax
    removed (``output`` then names the logits). ``image_shape`` is ``(H, W, C)`` whatever the
    model's ``layout``; ``mean``/``std`` are per channel, in units of pixel/255.
    """

    path: Path
    proto: Any
    input: str
    output: str
    layout: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    opset: int
    softmax_removed: bool
    notes: tuple[str, ...] = ()


def _onnx() -> Any:
    return require("onnx", "convert", purpose="ONNX intake")


def _dims(vi: Any) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in vi.type.tensor_type.shape.dim
    ]


def _read(path: Path) -> Any:
    onnx = _onnx()
    if not path.is_file():
        raise ConversionError(f"{path} does not exist", hint="pass the path of a .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ConversionError(
            f"{path} is not an ONNX model (it does not parse as one: {exc})", hint=_EXPORT_HINT
        ) from exc
    if proto.ir_version <= 0 or not proto.graph.node or not proto.graph.output:
        raise ConversionError(
            f"{path} is not an ONNX model (no graph in it)", hint=_EXPORT_HINT, path=str(path)
        )
    _load_external(proto, path)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    return proto


def _ort_max_ir(ir_version: int) -> int | None:
    """The newest IR version this onnxruntime opens, if ``ir_version`` is newer; else None.

    onnxruntime says it only by refusing a model, so a one-node model of that IR version
    is opened (about a millisecond).
    """
    import re

    import onnxruntime as ort

    onnx = _onnx()
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["y"])],
        "probe",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    probe = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    probe.ir_version = ir_version
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        found = re.search(r"max supported IR version: (\d+)", str(exc))
        return int(found.group(1)) if found else None
    return None


def _ir_for_onnxruntime(proto: Any, path: Path) -> str | None:
    """Lower an IR version newer than onnxruntime reads, when the model needs nothing newer.

    The IR version says which protobuf features a file may use (exporters write the newest
    their onnx package knows); the opset, not the IR version, says what the ops mean. The
    model is checked against the lower version, so a model that does use a newer feature
    is refused with what to do.
    """
    newest = _ort_max_ir(int(proto.ir_version))
    if newest is None:
        return None
    was = int(proto.ir_version)
    proto.ir_version = newest
    try:
        _onnx().checker.check_model(proto)
    except Exception as exc:
        raise ConversionError(
            f"{path} has ONNX IR version {was}; this onnxruntime reads up to {newest}, and the "
            f"model does not check at IR version {newest}: {exc}",
            hint="upgrade onnxruntime, or export with an older onnx package "
            "(torch.onnx.export writes the IR version of the installed onnx)",
            path=str(path),
        ) from exc
    return f"IR version {was} lowered to {newest}, the newest this onnxruntime reads"


def _load_external(proto: Any, path: Path) -> None:
    onnx = _onnx()
    base = path.parent.resolve()
    files = set()
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if not loc or os.path.isabs(loc) or base not in target.parents:
            raise ConversionError(
                f"{path}: weight {t.name!r} points at external data {loc!r} outside the model's "
                "folder",
                hint="keep the .onnx file and its .data file side by side, with a plain file name",
            )
        if not target.is_file():
            raise ConversionError(
                f"{path}: the weights are in an external data file {loc!r}, which is missing "
                f"from {base}",
                hint=f"copy {loc} next to {path.name} (torch.onnx.export writes them together)",
                missing=str(target),
            )
        files.add(target)
    if files:
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(base))
        except Exception as exc:
            raise ConversionError(
                f"{path}: cannot read its external data ({exc})",
                hint="export the model again; the .data file may be truncated",
            ) from exc


def _opset(proto: Any, path: Path) -> int:
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version < MIN_OPSET:
        raise ConversionError(
            f"{path} uses ONNX opset {version}; edgekit reads opsets {MIN_OPSET}-{MAX_OPSET}",
            hint="export again with torch.onnx.export(..., opset_version=17)",
        )
    others = sorted({o.domain for o in proto.opset_import if o.domain not in ("", "ai.onnx")})
    used = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if used:
        raise ConversionError(
            f"{path} uses operators from custom domains {used} (declared: {others})",
            hint="export with standard ONNX operators only (no custom or contrib ops)",
        )
    return int(version)


def _single_input(proto: Any, path: Path) -> Any:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConversionError(
            f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edgekit "
            "converts image classifiers with exactly one image input",
            hint="export a wrapper module whose forward takes only the image",
        )
    inp = inputs[0]
    dims = _dims(inp)
    if inp.type.tensor_type.elem_type != _FLOAT or len(dims) != 4:
        raise ConversionError(
            f"input {inp.name!r} of {path} is {dims} with element type "
            f"{inp.type.tensor_type.elem_type}; expected a float32 image batch of rank 4",
            hint="export with a float32 example of shape (1, C, H, W) (or (1, H, W, C))",
        )
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ConversionError(
            f"input {inp.name!r} of {path} has shape {dims}: only the batch dimension may be "
            "dynamic",
            hint="export with dynamic_axes={'input': {0: 'batch'}} only",
        )
    return inp


def _single_output(proto: Any, path: Path) -> tuple[str, int]:
    outs = list(proto.graph.output)
    if len(outs) != 1:
        raise ConversionError(
            f"{path} has {len(outs)} outputs ({', '.join(o.name for o in outs)}); edgekit "
            "converts classifiers with one (batch, classes) output, not detection or "
            "multi-head models",
            hint="export a wrapper that returns only the class scores",
        )
    dims = _dims(outs[0])
    if len(dims) != 2 or not isinstance(dims[1], int) or dims[1] < 2:
        raise ConversionError(
            f"output {outs[0].name!r} of {path} has shape {dims}; edgekit converts "
            "classifiers whose output is (batch, classes), not boxes or sequences",
            hint="export a model that ends in its classification layer",
        )
    return outs[0].name, int(dims[1])


def _strip_softmax(proto: Any, output: str) -> tuple[str, bool]:
    graph = proto.graph
    node = next((n for n in graph.node if output in n.output), None)
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return output, False
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    if axis not in (-1, 1):
        return output, False
    users = [n for n in graph.node if output in n.input]
    if users:
        return output, False
    logits = node.input[0]
    graph.node.remove(node)
    vi = graph.output[0]
    vi.name = logits
    return logits, True


def _batch_free(proto: Any, inp: Any, output: str) -> None:
    for vi in (inp, proto.graph.output[0]):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = "batch"
    del proto.graph.value_info[:]


def _guess_layout(dims: Sequence[int], option: str, meta: dict[str, str]) -> tuple[str, str]:
    choice = option.upper() if option and option != "auto" else meta.get("layout", "auto").upper()
    if choice in ("NCHW", "NHWC"):
        return choice, ""
    if choice != "AUTO":
        raise ConversionError(
            f"layout must be NCHW, NHWC or auto, not {choice!r}", hint="--layout NCHW"
        )
    chan_first, chan_last = dims[1] in (1, 3, 4), dims[3] in (1, 3, 4)
    if chan_first and not chan_last:
        return "NCHW", ""
    if chan_last and not chan_first:
        return "NHWC", ""
    return "NCHW", f"input layout guessed NCHW from shape {list(dims)}; pass --layout if wrong"


def _floats(what: str, raw: Any) -> tuple[float, ...]:
    if isinstance(raw, str):
        text = raw.strip()
        try:
            val = json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
        except ValueError as exc:
            raise ConversionError(
                f"{what} {raw!r} is not a number or a comma-separated list",
                hint=f"e.g. --{what} 0.485,0.456,0.406",
            ) from exc
        raw = val
    if isinstance(raw, (int, float)):
        raw = [raw]
    try:
        out = tuple(float(v) for v in raw)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{what} {raw!r} is not a list of numbers") from exc
    if not out:
        raise ConversionError(f"{what} is empty", hint=f"e.g. --{what} 0.5")
    return out


def _normalisation(
    mean: Any, std: Any, meta: dict[str, str], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...], list[str]]:
    notes = []
    m = mean if mean is not None else meta.get("mean")
    s = std if std is not None else meta.get("std")
    if (mean is None and m is not None) or (std is None and s is not None):
        notes.append("input normalisation read from the model's metadata_props")
    mv = _floats("mean", m) if m is not None else (0.0,)
    sv = _floats("std", s) if s is not None else (1.0,)
    if m is None and s is None:
        notes.append("no --mean/--std given: the model is fed pixel/255 unnormalised")
    if max(abs(v) for v in (*mv, *sv)) > 1.5:
        mv, sv = tuple(v / 255 for v in mv), tuple(v / 255 for v in sv)
        notes.append("mean/std read as 0-255 pixel units and divided by 255")
    for what, v in (("mean", mv), ("std", sv)):
        if len(v) not in (1, channels):
            raise ConversionError(
                f"{what} has {len(v)} values but the model input has {channels} channels",
                hint=f"give one value or one per channel ({channels})",
            )
    if any(not (v > 0) for v in sv):
        raise ConversionError(
            f"std must be positive, got {sv}", hint="e.g. --std 0.229,0.224,0.225"
        )
    return (
        mv * (channels // len(mv)),
        sv * (channels // len(sv)),
        notes,
    )


def load_onnx(
    path: str | os.PathLike[str],
    *,
    layout: str = "auto",
    mean: Any = None,
    std: Any = None,
) -> OnnxSource:
    """Read and check an ONNX image classifier; see :class:`OnnxSource`.

    ``mean``/``std`` (a number, a sequence, or ``"a,b,c"``) override the model's
    ``metadata_props`` entries ``mean``/``std``; ``layout`` (``auto``, ``NCHW``, ``NHWC``)
    overrides ``layout``. Raises :class:`~edgekit.ConversionError` on anything it cannot take.
    """
    p = Path(path)
    proto = _read(p)
    opset = _opset(proto, p)
    meta = {e.key.lower().removeprefix("edgekit."): e.value for e in proto.metadata_props}
    inp = _single_input(proto, p)
    output, n_classes = _single_output(proto, p)
    output, stripped = _strip_softmax(proto, output)
    _batch_free(proto, inp, output)
    dims = [int(d) for d in _dims(inp)[1:]]
    lay, note = _guess_layout([0, *dims], layout, meta)
    c, h, w = dims if lay == "NCHW" else (dims[2], dims[0], dims[1])
    notes = [note] if note else []
    mv, sv, more = _normalisation(mean, std, meta, c)
    notes.extend(more)
    if stripped:
        notes.append("final Softmax removed: exits and confidences work on the logits")
    if opset > MAX_OPSET:
        notes.append(f"opset {opset} is newer than the {MAX_OPSET} edgekit was tested with")
    ir_note = _ir_for_onnxruntime(proto, p)
    if ir_note:
        notes.append(ir_note)
    try:
        _onnx().checker.check_model(proto)
    except Exception as exc:
        raise ConversionError(f"{p} is not a valid ONNX model: {exc}", hint=_EXPORT_HINT) from exc
    return OnnxSource(
        path=p,
        proto=proto,
        input=inp.name,
        output=output,
        layout=lay,
        image_shape=(h, w, c),
        num_classes=n_classes,
        mean=mv,
        std=sv,
        opset=opset,
        softmax_removed=stripped,
        notes=tuple(notes),
    )
