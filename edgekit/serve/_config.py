"""``ServeConfig``: every option of ``edgekit serve``, as one immutable record."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from edgekit._errors import ServeError

__all__ = ["ServeConfig", "ServeError"]

ENGINES = ("builtin", "ray")


@dataclass(frozen=True)
class ServeConfig:
    """How to serve a package.

    ``token``: bearer token every route but exactly ``/v2/health/live`` requires (None: no
    auth). ``tls_cert``/``tls_key``: PEM files for HTTPS. ``max_batch`` rows per batch and
    ``max_delay_ms`` the oldest queued request waits for more (dynamic batching).
    ``threads``: interpreter threads per stage; ``workers``: batches running at once
    (default: one per split point, at most the CPU count). ``engine``: ``builtin``
    (uvicorn) or ``ray`` (Ray Serve, ``replicas`` copies, cluster at ``ray_address``).

    Limits (a request beyond them gets a 4xx, a connection beyond them is closed):
    ``max_body_mb`` per request body, also once decompressed (413); ``max_rows`` per request
    (413); ``header_timeout_s`` for a request's headers to arrive, counted from its first byte
    (or from the connection for its first request); ``body_timeout_s`` for its body (408);
    ``keep_alive_s`` idle between requests; ``max_connections`` open at once (built-in engine).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    backend: str = "onnxruntime"
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_body_mb: float = 8.0
    threads: int | None = 1
    workers: int | None = None
    engine: str = "builtin"
    replicas: int = 1
    ray_address: str | None = None
    keep_alive_s: float = 30.0
    max_rows: int = 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1024

    def __post_init__(self) -> None:
        _int("--port", self.port, 0, 65535)
        _int("--max-batch", self.max_batch, 1, 1 << 16)
        _num("--max-delay-ms", self.max_delay_ms, 0, 60_000)
        _num("--max-body-mb", self.max_body_mb, 1e-3, 4096)
        if self.threads is not None:
            _int("--threads", self.threads, 1, 1024)
        if self.workers is not None:
            _int("--workers", self.workers, 1, 1024)
        _int("--replicas", self.replicas, 1, 4096)
        _num("keep_alive_s", self.keep_alive_s, 0.1, 86_400)
        _int("--max-rows", self.max_rows, 1, 1 << 24)
        _num("--header-timeout", self.header_timeout_s, 0.1, 3600)
        _num("--body-timeout", self.body_timeout_s, 0.1, 86_400)
        _int("--max-connections", self.max_connections, 1, 1 << 20)
        if self.engine not in ENGINES:
            raise ServeError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.token is not None and not self.token.strip():
            raise ServeError("the token is empty", hint="pass a non-empty --token or --token-file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServeError("TLS needs both --tls-cert and --tls-key")
        for opt, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not Path(path).is_file():
                raise ServeError(f"{opt} {path}: no such file")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def with_(self, **changes: object) -> ServeConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _int(opt: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServeError(f"{opt} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ServeError(f"{opt} must be in {lo}..{hi}, got {value}")


def _num(opt: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServeError(f"{opt} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ServeError(f"{opt} must be a finite number, got {value}")
    if not lo <= value <= hi:
        raise ServeError(f"{opt} must be between {lo:g} and {hi:g}, got {value:g}")
