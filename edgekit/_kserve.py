"""Open Inference Protocol (KServe v2 REST) codec, with Triton's binary tensor data extension.

Shared by the device client (``edgekit.runtime``: stdlib and numpy only, no framework) and
the server (``edgekit serve``). Small free functions over bytes and header mappings; no I/O.

The split-computing contract (what both sides agree on):

- A package with N stages has split points ``s`` in ``0..N-1``. At split ``s`` the device ran
  stages ``0..s-1`` (none for ``s=0``) and sends the 8-bit tensor stage ``s`` takes as input
  (for ``s=0``, the quantized image as stage 0 expects it). The server runs stages
  ``s..N-1`` and returns the last exit's result. One model per split point, named
  :func:`model_name` (``f"{package}-split{s}"``); a model named after the package itself
  takes the split point as the request parameter ``"split"``.
- Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{m}``,
  ``/v2/models/{m}/ready``, ``POST /v2/models/{m}/infer`` (optionally with
  ``/versions/{v}`` after the model name).
- Request: one input named ``"input"``, datatype ``INT8`` or ``UINT8``, shape
  ``[B, *stage_s_input_shape]``, with input parameters ``"scale"`` (float) and
  ``"zero_point"`` (int) as the *device* quantized it. int8 with zero point ``z`` and uint8
  with zero point ``z + 128`` at the same scale hold the same values (``x ^ 0x80`` converts,
  :func:`to_8bit`). Optional request parameter ``"package_sha256"`` (sha256 of the device's
  ``manifest.json``, :func:`package_sha256`): the server refuses a different package.
- Body: plain JSON (``"data"`` lists), or binary: the JSON header, then the raw
  little-endian tensor bytes, with header ``Inference-Header-Content-Length: <len of JSON>``
  and ``"parameters": {"binary_data_size": n}`` on each binary input. The body may be
  compressed (``Content-Encoding: deflate`` (zlib) or ``gzip``).
- Response: outputs ``"logits"`` (FP32 ``[B, C]``, the dequantized logits of the last exit)
  and ``"confidence"`` (FP32 ``[B]``, their max softmax), plus ``"model_name"`` and ``"id"``
  (the request's). Outputs are binary when the request says so (request parameter
  ``"binary_data_output": true`` or output parameter ``"binary_data": true``).
- Errors: a 4xx status with a JSON body ``{"error": "what was wrong"}``
  (:class:`ProtocolError` carries the status; :func:`error_body` / :func:`decode_error`).
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from edgekit._errors import ProtocolError

__all__ = [
    "CONFIDENCE",
    "DATATYPES",
    "HEADER_LENGTH",
    "INPUT",
    "LOGITS",
    "OUTPUTS",
    "InferRequest",
    "InferResponse",
    "ProtocolError",
    "RequestedOutput",
    "Tensor",
    "choose_encoding",
    "compress",
    "datatype_of",
    "decode_error",
    "decode_infer_request",
    "decode_infer_response",
    "decompress",
    "dtype_of",
    "encode_infer_request",
    "encode_infer_response",
    "encode_split_request",
    "error_body",
    "infer_path",
    "model_name",
    "package_sha256",
    "parse_split_model",
    "read_infer_response",
    "short_repr",
    "to_8bit",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "input"
LOGITS = "logits"
CONFIDENCE = "confidence"
OUTPUTS = (LOGITS, CONFIDENCE)

# KServe v2 datatype -> numpy dtype (little-endian on the wire). BYTES is not supported.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "INT8": np.dtype("i1"),
    "UINT16": np.dtype("<u2"),
    "INT16": np.dtype("<i2"),
    "UINT32": np.dtype("<u4"),
    "INT32": np.dtype("<i4"),
    "UINT64": np.dtype("<u8"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dt.newbyteorder("="): name for name, dt in DATATYPES.items()}
_ENCODINGS = ("gzip", "deflate")
MAX_DIMS = 16  # dimensions of one tensor
MAX_DIM = (1 << 31) - 1  # size of one dimension
_MAX_ENCODINGS = 2  # Content-Encoding layers undone (gzip over deflate at most)

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = _repr.maxdict = 8
_repr.maxstring = _repr.maxother = 60
_repr.maxlong = 40


def short_repr(value: Any) -> str:
    """A bounded repr of something that came off the wire (for error messages)."""
    return _repr.repr(value)


@dataclass(frozen=True)
class Tensor:
    """A named tensor and its parameters (for an input: ``scale``, ``zero_point``)."""

    name: str
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def datatype(self) -> str:
        return datatype_of(self.data.dtype)


@dataclass(frozen=True)
class RequestedOutput:
    """An output a request asks for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request. ``outputs`` is None when the request names none (all)."""

    id: str | None
    parameters: Mapping[str, Any]
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool

    def input(self, name: str) -> Tensor:
        for t in self.inputs:
            if t.name == name:
                return t
        raise ProtocolError(
            f"the request has no input named {name!r} (it has "
            f"{', '.join(short_repr(t.name) for t in self.inputs[:8]) or 'none'})",
            expected=name,
        )

    def wanted(self, available: Sequence[str]) -> list[RequestedOutput]:
        """The outputs to send back, in order: the requested ones, or all of ``available``."""
        if self.outputs is None:
            return [RequestedOutput(n, self.binary_output) for n in available]
        for o in self.outputs:
            if o.name not in available:
                raise ProtocolError(
                    f"unknown output {short_repr(o.name)}; this model has {', '.join(available)}",
                    expected=list(available),
                    got=short_repr(o.name),
                )
        return list(self.outputs)


@dataclass(frozen=True)
class InferResponse:
    """A decoded infer response."""

    model_name: str
    model_version: str | None
    id: str | None
    parameters: Mapping[str, Any]
    outputs: tuple[Tensor, ...]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {t.name: t.data for t in self.outputs}


# -- small helpers ------------------------------------------------------------------------


def datatype_of(dtype: Any) -> str:
    """The KServe datatype name of a numpy dtype (``int8`` -> ``"INT8"``)."""
    dt = np.dtype(dtype).newbyteorder("=")
    try:
        return _BY_DTYPE[dt]
    except KeyError:
        raise ProtocolError(f"dtype {dt} has no KServe v2 datatype here") from None


def dtype_of(datatype: Any) -> np.dtype:
    """The numpy dtype of a KServe datatype name; :class:`ProtocolError` if unknown."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(
            f"unknown or unsupported datatype {short_repr(datatype)}; expected one of "
            f"{', '.join(DATATYPES)}",
            got=short_repr(datatype),
        ) from None


def model_name(package: str, split: int) -> str:
    """The served model for split point ``split`` of package ``package``."""
    return f"{package}-split{split}"


def parse_split_model(name: str, package: str) -> int | None:
    """The split point named by ``name`` (``PKG-splitS``); None for the bare package name.

    Raises :class:`ProtocolError` (404) for a name that is neither.
    """
    if name == package:
        return None
    prefix = f"{package}-split"
    tail = name[len(prefix) :]
    if name.startswith(prefix) and tail.isdigit() and tail.isascii() and len(tail) < 6:
        return int(tail)
    raise ProtocolError(
        f"unknown model {short_repr(name)}; this server serves {package!r} as "
        f"{prefix}0, {prefix}1, ...",
        status=404,
        got=short_repr(name),
    )


def infer_path(model: str, version: str | None = None) -> str:
    """The URL path of the infer route for ``model``."""
    v = f"/versions/{version}" if version else ""
    return f"/v2/models/{model}{v}/infer"


def package_sha256(root: str | os.PathLike[str]) -> str:
    """The sha256 of a package's ``manifest.json`` (which pins every other file's sha256).

    Computed where the manifest is read (:func:`edgekit.read_manifest`), without checking
    the other files' contents.
    """
    from edgekit._package import read_manifest

    return read_manifest(root, verify=False).sha256


def to_8bit(x: np.ndarray, dtype: Any) -> np.ndarray:
    """``x`` (int8 or uint8) as ``dtype`` with the same real values at the same scale.

    int8 with zero point ``z`` equals uint8 with zero point ``z + 128``: flipping the top
    bit converts one into the other.
    """
    dt = np.dtype(dtype)
    if x.dtype == dt:
        return x
    if x.dtype.itemsize != 1 or dt.itemsize != 1 or x.dtype.kind not in "iu":
        raise ProtocolError(f"cannot convert {x.dtype} to {dt}: only int8 <-> uint8")
    return (x.view(np.uint8) ^ np.uint8(0x80)).view(dt)


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    v = headers.get(name)
    if v is None:
        low = name.lower()
        v = headers.get(low)
        if v is None:
            v = next((val for k, val in headers.items() if k.lower() == low), None)
    return v


def _check_encoding(encoding: str) -> str:
    enc = encoding.strip().lower()
    if enc == "x-gzip":
        return "gzip"
    if enc not in (*_ENCODINGS, "identity", ""):
        raise ProtocolError(
            f"unsupported Content-Encoding {short_repr(encoding)}; use gzip or deflate",
            status=415,
            got=short_repr(encoding),
        )
    return enc


def compress(data: bytes, encoding: str, level: int = 6) -> bytes:
    """``data`` compressed as ``gzip`` or ``deflate`` (zlib format)."""
    enc = _check_encoding(encoding)
    if enc == "gzip":
        c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if enc == "deflate":
        return zlib.compress(data, level)
    return data


def decompress(data: bytes, encoding: str | None, *, limit: int | None = None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate: zlib or raw), refusing more than ``limit``
    bytes of output (413) and corrupt or truncated data (400)."""
    if not encoding:
        return data
    encs = [_check_encoding(e) for e in encoding.split(",")]
    if sum(e not in ("identity", "") for e in encs) > _MAX_ENCODINGS:
        raise ProtocolError(
            f"Content-Encoding has more than {_MAX_ENCODINGS} layers",
            status=415,
            hint="compress the body once, with gzip or deflate",
        )
    for enc in reversed(encs):
        if enc in ("identity", ""):
            continue
        wbits_options = (16 + zlib.MAX_WBITS,) if enc == "gzip" else (zlib.MAX_WBITS, -15)
        err: Exception | None = None
        for wbits in wbits_options:
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(data, (limit + 1) if limit else 0)
            except zlib.error as exc:
                err = exc
                continue
            if limit is not None and len(out) > limit:
                raise ProtocolError(
                    f"the request body is larger than {limit} bytes once decompressed",
                    status=413,
                    limit=limit,
                )
            if not d.eof:
                err = zlib.error("truncated stream")
                continue
            data = out
            err = None
            break
        if err is not None:
            raise ProtocolError(
                f"the body is not valid {enc} data ({err})",
                hint="send the body compressed as the Content-Encoding header says",
            )
    return data


def choose_encoding(accept: str | None) -> str | None:
    """The response encoding to use for an ``Accept-Encoding`` header (gzip, deflate, None)."""
    if not accept:
        return None
    best: tuple[float, str] | None = None
    for part in accept.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if token == "x-gzip":
            token = "gzip"
        if token not in _ENCODINGS:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q > 0 and (best is None or q > best[0]):
            best = (q, token)
    return best[1] if best else None


def error_body(message: str) -> bytes:
    """The JSON body of an error response."""
    return json.dumps({"error": message}).encode()


def decode_error(body: bytes, headers: Mapping[str, str] | None = None) -> str:
    """The message of an error response (the raw text when it is not the JSON form)."""
    try:
        raw = decompress(body, _header(headers, "Content-Encoding"), limit=1 << 20)
        msg = json.loads(raw).get("error")
        if isinstance(msg, str):
            return msg
    except (ValueError, AttributeError):
        pass
    return body[:500].decode("utf-8", "replace")


# -- encoding ---------------------------------------------------------------------------


_TensorsLike = Union[Sequence[Tensor], Mapping[str, np.ndarray]]


def _tensors(items: _TensorsLike) -> list[Tensor]:
    if isinstance(items, Mapping):
        return [Tensor(k, np.asarray(v)) for k, v in items.items()]
    return list(items)


def _tensor_json(t: Tensor, binary: bool, chunks: list[bytes]) -> dict[str, Any]:
    arr = np.asarray(t.data)
    dt = datatype_of(arr.dtype)
    d: dict[str, Any] = {"name": t.name, "datatype": dt, "shape": [int(n) for n in arr.shape]}
    params = dict(t.parameters)
    if binary:
        raw = np.ascontiguousarray(arr, dtype=DATATYPES[dt]).tobytes()
        params["binary_data_size"] = len(raw)
        chunks.append(raw)
    else:
        d["data"] = arr.ravel().tolist()
    if params:
        d["parameters"] = params
    return d


def _finish(
    header: dict[str, Any], chunks: list[bytes], encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header, separators=(",", ":")).encode()
    headers: dict[str, str] = {}
    if chunks:
        headers[HEADER_LENGTH] = str(len(head))
        headers["Content-Type"] = "application/octet-stream"
        body = b"".join([head, *chunks])
    else:
        headers["Content-Type"] = "application/json"
        body = head
    if encoding == "auto":
        small = zlib.compress(body, 1)
        if len(small) < 0.9 * len(body):
            body = small
            headers["Content-Encoding"] = "deflate"
    elif encoding:
        body = compress(body, encoding)
        headers["Content-Encoding"] = _check_encoding(encoding)
    headers["Content-Length"] = str(len(body))
    return body, headers


def encode_infer_request(
    inputs: _TensorsLike,
    *,
    params: Mapping[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
    binary: bool = True,
    binary_outputs: bool = True,
    compress: str | None = None,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer request.

    ``inputs``: :class:`Tensor` records (with parameters) or ``{name: array}``. ``binary``
    sends tensors as raw bytes after the JSON header; ``binary_outputs`` asks for binary
    outputs. ``outputs``: names to return (default: all). ``compress``: ``"deflate"``,
    ``"gzip"``, ``"auto"`` (deflate when it saves at least 10%) or None.
    """
    chunks: list[bytes] = []
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = str(request_id)
    p = dict(params or {})
    if binary_outputs and outputs is None:
        p["binary_data_output"] = True
    if p:
        header["parameters"] = p
    header["inputs"] = [_tensor_json(t, binary, chunks) for t in _tensors(inputs)]
    if outputs is not None:
        header["outputs"] = [
            {"name": n, "parameters": {"binary_data": bool(binary_outputs)}} for n in outputs
        ]
    return _finish(header, chunks, compress)


def encode_split_request(
    x: np.ndarray,
    *,
    scale: float,
    zero_point: int,
    package_sha256: str | None = None,
    split: int | None = None,
    request_id: str | None = None,
    binary: bool = True,
    binary_outputs: bool | None = None,
    compress: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An edgekit split request: the 8-bit tensor ``x`` (batch first) with its quantization.

    POST it to :func:`infer_path` of :func:`model_name` ``(package, s)``; ``split`` is only
    for the model named after the package itself. Outputs come back binary when
    ``binary_outputs`` (default: like the request).
    """
    x = np.asarray(x)
    if x.dtype not in (np.int8, np.uint8):
        raise ProtocolError(f"split requests carry int8 or uint8 tensors, not {x.dtype}")
    params: dict[str, Any] = {}
    if package_sha256:
        params["package_sha256"] = package_sha256
    if split is not None:
        params["split"] = int(split)
    t = Tensor(INPUT, x, {"scale": float(scale), "zero_point": int(zero_point)})
    return encode_infer_request(
        [t],
        params=params,
        binary=binary,
        binary_outputs=binary if binary_outputs is None else binary_outputs,
        compress=compress,
        request_id=request_id,
    )


def encode_infer_response(
    model_name: str,
    outputs: _TensorsLike,
    *,
    request_id: str | None = None,
    binary: bool | Collection[str] = False,
    parameters: Mapping[str, Any] | None = None,
    model_version: str | None = None,
    compress: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer response. ``binary``: all outputs, or those named."""
    chunks: list[bytes] = []
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = dict(parameters)
    header["outputs"] = [
        _tensor_json(t, binary if isinstance(binary, bool) else t.name in binary, chunks)
        for t in _tensors(outputs)
    ]
    return _finish(header, chunks, compress)


# -- decoding ---------------------------------------------------------------------------


def _split_body(body: bytes, headers: Mapping[str, str] | None) -> tuple[Any, memoryview]:
    """(parsed JSON header, the binary part) of a request or response body."""
    raw = _header(headers, HEADER_LENGTH)
    view = memoryview(body)
    if raw is None:
        head, rest = view, view[len(view) :]
    else:
        try:
            n = int(raw.strip())
        except ValueError:
            raise ProtocolError(
                f"{HEADER_LENGTH} must be an integer, got {raw[:40]!r}", got=raw[:40]
            ) from None
        if not 0 < n <= len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes",
                hint="it must be the length of the JSON header at the start of the body",
                got=n,
            )
        head, rest = view[:n], view[n:]
    try:
        doc = json.loads(bytes(head))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and an integer longer than Python converts
        what = "JSON header" if raw is not None else "body"
        hint = None
        binary_after = isinstance(exc, UnicodeDecodeError) or (
            isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data"
        )
        if raw is None and body[:1] == b"{" and binary_after:
            hint = f"a binary request needs the {HEADER_LENGTH} header"
        why = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ProtocolError(f"the {what} is not valid JSON ({why})", hint=hint) from None
    if not isinstance(doc, dict):
        raise ProtocolError("the JSON header must be an object")
    return doc, rest


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _params(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    p = obj.get("parameters", {})
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    return p


def _shape(shape: Any, where: str) -> list[int]:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(_is_int(s) and 0 <= s <= MAX_DIM for s in shape)
    ):
        raise ProtocolError(
            f"{where}: 'shape' must be a list of at most {MAX_DIMS} integers in 0..{MAX_DIM}, "
            f"got {short_repr(shape)}"
        )
    return shape


def _json_data(data: Any, dt: np.dtype, shape: list[int], where: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"{where}: 'data' is not a (nested) list of numbers") from None
    kind = arr.dtype.kind
    if arr.size == 0 and kind == "f":
        kind = dt.kind  # np.asarray([]) is float64
    ok = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dt.kind]
    if kind not in ok:
        raise ProtocolError(
            f"{where}: 'data' holds {arr.dtype.name} values, not what datatype "
            f"{datatype_of(dt)} needs",
            got=arr.dtype.name,
        )
    if dt.kind in "iu" and arr.size:
        info = np.iinfo(dt)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise ProtocolError(
                f"{where}: values {lo}..{hi} are out of range for {datatype_of(dt)} "
                f"({info.min}..{info.max})"
            )
    n = math.prod(shape)
    if arr.size != n:
        raise ProtocolError(
            f"{where}: 'data' has {arr.size} values but shape {shape} needs {n}",
            expected=n,
            got=int(arr.size),
        )
    return arr.astype(dt).reshape(shape)


def _tensor(
    d: Any, where: str, rest: memoryview, offset: int, max_rows: int | None = None
) -> tuple[Tensor, int]:
    if not isinstance(d, dict):
        raise ProtocolError(f"{where} must be an object")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where} needs a 'name' (string)")
    where = f"{where.split()[0]} {short_repr(name)}"
    shape = _shape(d.get("shape"), where)
    if max_rows is not None and shape and shape[0] > max_rows:
        raise ProtocolError(
            f"{where} has {shape[0]} rows; this server takes at most {max_rows} per request",
            status=413,
            hint="split the batch into several requests",
            limit=max_rows,
        )
    dt = dtype_of(d.get("datatype"))
    params = _params(d, where)
    size = params.pop("binary_data_size", None)
    if size is not None:
        if "data" in d:
            raise ProtocolError(f"{where} has both 'data' and binary_data_size")
        if not _is_int(size) or size < 0:
            raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
        need = math.prod(shape) * dt.itemsize
        if size != need:
            raise ProtocolError(
                f"{where}: binary_data_size is {size} bytes but shape {shape} of "
                f"{datatype_of(dt)} needs {need}",
                expected=need,
                got=size,
            )
        if offset + size > len(rest):
            raise ProtocolError(
                f"{where}: the body ends before its {size} bytes of binary data "
                f"({len(rest) - offset} left)",
                hint=f"check {HEADER_LENGTH} and binary_data_size",
            )
        arr = np.frombuffer(rest[offset : offset + size], dtype=dt).reshape(shape)
        return Tensor(name, arr, params), offset + size
    if "data" not in d:
        raise ProtocolError(f"{where} has neither 'data' nor a binary_data_size parameter")
    return Tensor(name, _json_data(d["data"], dt, shape, where), params), offset


def decode_infer_request(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    limit: int | None = None,
    max_rows: int | None = None,
) -> InferRequest:
    """Parse an infer request (JSON or binary, possibly compressed).

    Raises :class:`ProtocolError` with the status to answer: 400 for a malformed request,
    413 when the body (decompressed) exceeds ``limit`` bytes or an input's first dimension
    exceeds ``max_rows`` (checked on the declared shape, before any tensor is built), 415 for
    an unknown encoding. Nothing is allocated beyond a small multiple of ``limit``.
    """
    if limit is not None and len(body) > limit:
        raise ProtocolError(
            f"the request body is larger than {limit} bytes", status=413, limit=limit
        )
    body = decompress(body, _header(headers, "Content-Encoding"), limit=limit)
    doc, rest = _split_body(body, headers)
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    params = _params(doc, "the request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("the binary_data_output parameter must be true or false")
    ins = doc.get("inputs")
    if not isinstance(ins, list) or not ins:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    tensors = []
    offset = 0
    for i, d in enumerate(ins):
        t, offset = _tensor(d, f"input #{i}", rest, offset, max_rows)
        tensors.append(t)
    if offset != len(rest):
        raise ProtocolError(
            f"the body has {len(rest) - offset} bytes after the inputs' binary data",
            hint=f"{HEADER_LENGTH} and the binary_data_size parameters must add up to "
            "the body length",
        )
    outs = doc.get("outputs")
    outputs: tuple[RequestedOutput, ...] | None = None
    if outs is not None:
        if not isinstance(outs, list):
            raise ProtocolError("'outputs' must be a list")
        got = []
        for i, o in enumerate(outs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ProtocolError(f"output #{i} needs a 'name' (string)")
            oname = short_repr(o["name"])
            b = _params(o, f"output {oname}").get("binary_data", binary_output)
            if not isinstance(b, bool):
                raise ProtocolError(f"output {oname}: binary_data must be true or false")
            got.append(RequestedOutput(o["name"], b))
        outputs = tuple(got)
    return InferRequest(rid, params, tuple(tensors), outputs, binary_output)


def read_infer_response(body: bytes, headers: Mapping[str, str] | None = None) -> InferResponse:
    """Parse an infer response (JSON or binary outputs, possibly compressed)."""
    body = decompress(body, _header(headers, "Content-Encoding"))
    doc, rest = _split_body(body, headers)
    if "error" in doc and "outputs" not in doc:
        raise ProtocolError(f"the server answered with an error: {doc['error']}")
    outs = doc.get("outputs")
    if not isinstance(outs, list):
        raise ProtocolError("the response has no 'outputs' list")
    tensors = []
    offset = 0
    for i, d in enumerate(outs):
        t, offset = _tensor(d, f"output #{i}", rest, offset)
        tensors.append(t)
    name = doc.get("model_name")
    version = doc.get("model_version")
    return InferResponse(
        str(name) if name is not None else "",
        str(version) if version is not None else None,
        doc.get("id") if isinstance(doc.get("id"), str) else None,
        _params(doc, "the response"),
        tuple(tensors),
    )


def decode_infer_response(
    body: bytes, headers: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """The outputs of an infer response by name (``{"logits": ..., "confidence": ...}``)."""
    return read_infer_response(body, headers).as_dict()
