"""The KServe v2 protocol handler: routes, auth, validation, batching. No HTTP framework.

``Handler.handle(method, path, headers, body)`` returns a :class:`Reply`; the ASGI app
(``_asgi``) feeds it from uvicorn or from a Ray Serve replica, so both engines answer
exactly alike.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit._kserve import (
    CONFIDENCE,
    INPUT,
    LOGITS,
    OUTPUTS,
    InferRequest,
    ProtocolError,
    choose_encoding,
    encode_infer_response,
    error_body,
    model_name,
    parse_split_model,
    short_repr,
    to_8bit,
)
from edgekit._package import Manifest, read_manifest

from ._batcher import Batcher, Closed
from ._config import ServeConfig
from ._decode import Decoder
from ._tail import Tail, TailInput, open_tails

__all__ = ["Handler", "Reply", "load_handler"]

_log = logging.getLogger("edgekit.serve")

VERSION = "1"  # the only model version served
_COMPRESS_MIN = 1024  # smaller responses are not worth compressing
_JSON = {"Content-Type": "application/json"}
PUBLIC = "/v2/health/live"  # the only route that needs no token (liveness probes)


@dataclass(frozen=True)
class Reply:
    """An HTTP response: status, headers and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def _json(status: int, doc: Any, extra: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {**_JSON, **(extra or {})}, json.dumps(doc).encode())


def _error(status: int, message: str, extra: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {**_JSON, **(extra or {})}, error_body(message))


class Handler:
    """Serves a package's tails: one model per split point, dynamically batched."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        tails: Sequence[Tail],
        config: ServeConfig,
        backend: str,
        *,
        decode_processes: bool = True,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.config = config
        self.backend = backend
        self.name = manifest.name
        self.sha256 = manifest.sha256
        self.tails = list(tails)
        self.models = [model_name(self.name, t.split) for t in self.tails]
        self._executor = ThreadPoolExecutor(
            max_workers=config.workers or min(len(self.tails), os.cpu_count() or 1),
            thread_name_prefix="edgekit-tail",
        )
        self._decoder = Decoder(
            limit=config.max_body_bytes, max_rows=config.max_rows, processes=decode_processes
        )
        delay = config.max_delay_ms / 1e3
        self.batchers = [
            Batcher(t, max_batch=t.max_batch, max_delay=delay, executor=self._executor)
            for t in self.tails
        ]
        self._token = config.token.encode() if config.token else None
        self.ready = True

    # -- HTTP entry points -------------------------------------------------------------

    def precheck(self, method: str, path: str, headers: Mapping[str, str]) -> Reply | None:
        """What can be refused before reading the body: auth, a too large Content-Length."""
        if self._token is not None and path != PUBLIC:
            got = headers.get("authorization", "")
            scheme, _, token = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self._token
            ):
                what = "a wrong bearer token" if got else "no Authorization header"
                return _error(
                    401,
                    f"unauthorized: the request has {what}; send 'Authorization: Bearer TOKEN'",
                    {"WWW-Authenticate": 'Bearer realm="edgekit"'},
                )
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return _error(400, f"Content-Length is not an integer: {length[:40]!r}")
            if n > self.config.max_body_bytes:
                return self.too_large()
        return None

    def too_large(self) -> Reply:
        return _error(
            413,
            f"the request body is larger than the server's limit of "
            f"{self.config.max_body_bytes} bytes (--max-body-mb)",
        )

    def too_slow(self) -> Reply:
        return _error(
            408,
            f"the request body did not arrive within {self.config.body_timeout_s:g} s "
            "(--body-timeout)",
            {"Connection": "close"},
        )

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """Answer one request. ``headers`` must have lower-case names."""
        pre = self.precheck(method, path, headers)
        if pre is not None:
            return pre
        try:
            return await self._route(method, path, headers, body)
        except ProtocolError as exc:
            return _error(exc.status, exc.message + (f" ({exc.hint})" if exc.hint else ""))
        except Closed as exc:
            return _error(503, str(exc))
        except Exception:  # a bug, not a bad request: log it, tell the client only a reference
            ref = secrets.token_hex(4)
            _log.exception("edgekit: internal error %s on %s %s", ref, method, path[:200])
            return _error(500, f"internal server error (reference {ref} in the server's log)")

    async def _route(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "v2":
            return _error(404, f"no route {short_repr(path)}; the API is under /v2 (KServe v2)")
        rest = parts[1:]
        get = method in ("GET", "HEAD")
        if not rest:
            return self._allow(get, method, path) or _json(200, self.server_metadata())
        if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            if not get:
                return self._method(method, path)
            ok = rest[1] == "live" or self.ready
            return _json(200 if ok else 503, {rest[1]: ok})
        if rest[0] == "models":
            if rest[1:] == ["stats"]:
                return self._allow(get, method, path) or _json(200, self.stats())
            if len(rest) >= 2:
                return await self._model_route(method, rest[1], rest[2:], headers, body)
        return _error(404, f"no route {short_repr(path)}")

    async def _model_route(
        self,
        method: str,
        name: str,
        rest: list[str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        split = parse_split_model(name, self.name)
        if split is not None and not 0 <= split < len(self.tails):
            raise ProtocolError(
                f"unknown model {name!r}: split points are 0..{len(self.tails) - 1}",
                status=404,
            )
        if len(rest) >= 2 and rest[0] == "versions":
            if rest[1] != VERSION:
                raise ProtocolError(
                    f"model {name!r} has no version {rest[1]!r} (only {VERSION!r})", status=404
                )
            rest = rest[2:]
        get = method in ("GET", "HEAD")
        path = "/".join(["/v2/models", name, *rest])
        if not rest:
            return self._allow(get, method, path) or _json(200, self.model_metadata(split))
        if rest == ["ready"]:
            return self._allow(get, method, path) or _json(
                200 if self.ready else 503, {"name": name, "ready": self.ready}
            )
        if rest == ["stats"]:
            return self._allow(get, method, path) or _json(200, self.stats(split))
        if rest == ["infer"]:
            if method != "POST":
                return self._method(method, path, "POST")
            return await self.infer(name, split, headers, body)
        return _error(404, f"no route {short_repr(path)}")

    def _allow(self, get: bool, method: str, path: str) -> Reply | None:
        return None if get else self._method(method, path)

    def _method(self, method: str, path: str, allowed: str = "GET") -> Reply:
        return _error(405, f"{method} is not allowed on {path}", {"Allow": allowed})

    # -- metadata ----------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "edgekit",
            "version": edgekit.__version__,
            "extensions": ["binary_tensor_data", "statistics"],
            "models": self.models,
        }

    def model_metadata(self, split: int | None) -> dict[str, Any]:
        t = self.tails[split or 0]
        inp = {
            "name": INPUT,
            "datatype": t.input.dtype.name.upper(),
            "shape": [-1, *t.input.shape],
        }
        params: dict[str, Any] = {
            "package": self.name,
            "package_sha256": self.sha256,
            "stages": len(self.tails),
            "input_scale": t.input.quant.scale,
            "input_zero_point": t.input.quant.zero_point,
            "max_batch_size": t.max_batch,
            "backend": self.backend,
        }
        if split is None:
            params["split"] = f"request parameter 'split' (0..{len(self.tails) - 1})"
            inp["shape"] = [-1] * (1 + len(t.input.shape))
        else:
            params["split"] = split
        return {
            "name": self.name if split is None else self.models[split],
            "versions": [VERSION],
            "platform": f"edgekit_{self.backend}",
            "inputs": [inp],
            "outputs": [
                {"name": LOGITS, "datatype": "FP32", "shape": [-1, t.n_classes]},
                {"name": CONFIDENCE, "datatype": "FP32", "shape": [-1]},
            ],
            "parameters": params,
        }

    def stats(self, split: int | None = None) -> dict[str, Any]:
        """Triton-style ``model_stats`` with edgekit's batch counters."""
        which = range(len(self.tails)) if split is None else [split]
        out = []
        for s in which:
            st = self.batchers[s].stats
            out.append(
                {
                    "name": self.models[s],
                    "version": VERSION,
                    "inference_count": st.rows,
                    "execution_count": st.batches,
                    **st.as_dict(),
                }
            )
        return {"model_stats": out}

    # -- inference ---------------------------------------------------------------------

    async def infer(
        self, name: str, split: int | None, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        req = await self._decoder.decode(body, headers)
        want = req.parameters.get("package_sha256")
        if want is not None and want != self.sha256:
            theirs = (want if isinstance(want, str) else short_repr(want))[:16]
            raise ProtocolError(
                f"package mismatch: the device runs a package whose manifest has sha256 "
                f"{theirs}..., this server serves {self.name!r} with {self.sha256[:16]}...",
                status=409,
                hint="push the same package version to the device and the server",
            )
        if split is None:
            split = self._split_param(req.parameters.get("split"))
        tail = self.tails[split]
        x = self._check_input(req, tail)
        wanted = req.wanted(OUTPUTS)
        logits, conf = await self.batchers[split].submit(x)
        values = {LOGITS: logits, CONFIDENCE: conf}
        outs = {o.name: values[o.name] for o in wanted}
        binary = [o.name for o in wanted if o.binary]
        body_out, hdrs = encode_infer_response(
            name,
            outs,
            request_id=req.id,
            binary=binary,
            parameters={"split": split},
        )
        enc = choose_encoding(headers.get("accept-encoding"))
        if enc and len(body_out) >= _COMPRESS_MIN:
            body_out, hdrs = encode_infer_response(
                name,
                outs,
                request_id=req.id,
                binary=binary,
                parameters={"split": split},
                compress=enc,
            )
        return Reply(200, hdrs, body_out)

    def _split_param(self, value: Any) -> int:
        n = len(self.tails)
        if value is None:
            raise ProtocolError(
                f"model {self.name!r} needs the request parameter 'split' (0..{n - 1}); or "
                f"call {model_name(self.name, 0)} ... {model_name(self.name, n - 1)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise ProtocolError(
                f"the 'split' parameter must be an integer in 0..{n - 1}, got {short_repr(value)}",
                status=404 if isinstance(value, int) and not isinstance(value, bool) else 400,
            )
        return value

    def _check_input(self, req: InferRequest, tail: Tail) -> np.ndarray:
        if len(req.inputs) != 1:
            raise ProtocolError(
                f"the model takes exactly one input named {INPUT!r}; the request has "
                f"{len(req.inputs)}"
            )
        t = req.input(INPUT)
        x = t.data
        spec = tail.input
        if x.dtype not in (np.int8, np.uint8):
            raise ProtocolError(
                f"input {INPUT!r} has datatype {t.datatype}; split {spec.split} takes INT8 or "
                f"UINT8 (this server's stages use {spec.dtype.name.upper()})"
            )
        if x.ndim != len(spec.shape) + 1 or tuple(x.shape[1:]) != spec.shape:
            raise ProtocolError(
                f"input {INPUT!r} has shape {list(x.shape)}; split {spec.split} takes "
                f"[B, {', '.join(map(str, spec.shape))}]",
                hint=f"the device must send what stage {spec.split} takes: "
                + (
                    "the quantized image"
                    if spec.split == 0
                    else f"the features of stage {spec.split - 1}"
                ),
            )
        if x.shape[0] < 1:
            raise ProtocolError(f"input {INPUT!r} has a batch of 0; send at least one row")
        self._check_quant(t.parameters, x.dtype, spec)
        return np.ascontiguousarray(to_8bit(x, spec.dtype))

    def _check_quant(self, params: Mapping[str, Any], dtype: np.dtype, spec: TailInput) -> None:
        """The device's scale and zero point must be the stage's (any 8-bit type)."""
        scale = params.get("scale")
        zp = params.get("zero_point")
        if scale is None and zp is None:
            return  # a third-party client: the tensor is taken to be on the stage's grid
        if scale is None or zp is None:
            raise ProtocolError(
                "input parameters 'scale' and 'zero_point' go together; send both or neither"
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ProtocolError(
                f"input parameter 'scale' must be a number, got {short_repr(scale)}"
            )
        try:
            scale = float(scale)  # an int of 400 digits does not fit
        except OverflowError:
            scale = math.inf
        if not math.isfinite(scale) or scale <= 0:
            raise ProtocolError(
                f"input parameter 'scale' must be a positive finite number, got {short_repr(scale)}"
            )
        if isinstance(zp, bool) or not isinstance(zp, int):
            raise ProtocolError(
                f"input parameter 'zero_point' must be an integer, got {short_repr(zp)}"
            )
        info = np.iinfo(dtype)
        if not info.min <= zp <= info.max:
            raise ProtocolError(
                f"input parameter 'zero_point' {short_repr(zp)} is out of range for {dtype.name}"
            )
        q = spec.quant
        shift = 0 if dtype == spec.dtype else (128 if spec.dtype == np.uint8 else -128)
        if abs(scale - q.scale) > 1e-5 * q.scale or zp + shift != q.zero_point:
            mine = q.as_dtype(dtype.name)
            raise ProtocolError(
                f"package versions differ: the device quantized split {spec.split}'s input "
                f"with scale {scale:.8g}, zero point {zp} ({dtype.name}); this server's "
                f"package ({self.name}, sha256 {self.sha256[:12]}...) uses scale "
                f"{q.scale:.8g}, zero point {mine.zero_point} ({dtype.name})",
                hint="deploy the same package to the device and the server",
            )

    # -- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop batching (queued requests get 503) and release the interpreters."""
        self.ready = False
        for b in self.batchers:
            await b.close()
        self._executor.shutdown(wait=True)
        self._decoder.close()
        for t in self.tails:
            t.close()


def load_handler(package: str | os.PathLike[str], config: ServeConfig) -> Handler:
    """Open a package's tails for every split point and build the handler."""
    root = Path(package)
    manifest = read_manifest(root, verify=True)
    tails = open_tails(
        root, manifest, config.backend, threads=config.threads, max_batch=config.max_batch
    )
    return Handler(root, manifest, tails, config, config.backend)
