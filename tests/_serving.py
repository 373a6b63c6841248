"""Helpers shared by the serve tests: a stdlib keep-alive client, and the same stages run
in-process through edgekit.runtime (what the server's answers are compared with)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import read_manifest
from edgekit._kserve import decode_infer_response  # internal: the KServe v2 codec
from edgekit.runtime import Quantizer, backends

__all__ = ["Client", "Local", "softmax_max"]


class Client:
    """A keep-alive HTTP(S) client for one server (stdlib only)."""

    def __init__(self, url: str, *, token: str | None = None, context: Any = None) -> None:
        scheme, rest = url.split("://")
        host, port = rest.rsplit(":", 1)
        if scheme == "https":
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, int(port), context=context, timeout=30
            )
        else:
            self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if self.token:
            h.setdefault("Authorization", f"Bearer {self.token}")
        self.conn.request(method, path, body, h)
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        status, hdrs, body = self.call(method, path, **kw)
        assert hdrs["content-type"] == "application/json", (path, hdrs)
        return status, json.loads(body)

    def infer(self, model: str, body: bytes, headers: dict[str, str]) -> dict[str, np.ndarray]:
        status, hdrs, out = self.call("POST", f"/v2/models/{model}/infer", body, headers)
        assert status == 200, out[:500]
        return decode_infer_response(out, hdrs)

    def close(self) -> None:
        self.conn.close()


class Local:
    """The same stages run in-process through one of edgekit.runtime's backends."""

    def __init__(self, pkg: Path, backend: str = "onnxruntime") -> None:
        self.m = read_manifest(pkg)
        mod = backends.get(backend)
        self.runners = [mod.open_stage(pkg / s.files[mod.FORMAT], 1) for s in self.m.stages]
        self.dtype = np.dtype(self.runners[0].input_dtype)
        q0 = self.m.stages[0].input.quant
        assert q0 is not None
        self.quant = Quantizer(self.m.input, q0.as_dtype(self.dtype.name))

    def features(self, images: np.ndarray, split: int) -> np.ndarray:
        """What the device sends at ``split``: stage ``split``'s 8-bit input."""
        h = self.quant.batch(images)
        for k in range(split):
            h, _ = self.runners[k](h)
        return h

    def tail(self, x: np.ndarray, split: int) -> np.ndarray:
        h, logits = x, None
        for k in range(split, len(self.runners)):
            h, logits = self.runners[k](h)
        assert logits is not None
        q = self.m.stages[-1].logits.quant
        assert q is not None
        zp = q.as_dtype(logits.dtype.name).zero_point
        return (logits.astype(np.float32) - np.float32(zp)) * np.float32(q.scale)

    def input_quant(self, split: int, dtype: str | None = None) -> tuple[float, int]:
        q = self.m.stages[split].input.quant
        assert q is not None
        q = q.as_dtype(dtype or self.dtype.name)
        return q.scale, q.zero_point


def softmax_max(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)
