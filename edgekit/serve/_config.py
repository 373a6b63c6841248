"""``ServeConfig``: every option of ``edgekit serve``, as one immutable record."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from edgekit._errors import EdgekitError

__all__ = ["ServeConfig", "ServeError"]

ENGINES = ("builtin", "ray")


class ServeError(EdgekitError):
    """The server cannot start (bad option, busy port, unreadable certificate...)."""


@dataclass(frozen=True)
class ServeConfig:
    """How to serve a package.

    ``token``: bearer token every route but ``/v2/health/live`` requires (None: no auth).
    ``tls_cert``/``tls_key``: PEM files for HTTPS. ``max_batch`` rows per batch and
    ``max_delay_ms`` the oldest queued request waits for more (dynamic batching).
    ``threads``: interpreter threads per stage; ``workers``: batches running at once
    (default: one per split point, at most the CPU count). ``engine``: ``builtin``
    (uvicorn) or ``ray`` (Ray Serve, ``replicas`` copies, cluster at ``ray_address``).
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

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ServeError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_delay_ms < 0:
            raise ServeError(f"--max-delay-ms must be >= 0, got {self.max_delay_ms}")
        if self.max_body_mb <= 0:
            raise ServeError(f"--max-body-mb must be positive, got {self.max_body_mb}")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port must be in 0..65535, got {self.port}")
        if self.engine not in ENGINES:
            raise ServeError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.replicas < 1:
            raise ServeError(f"--replicas must be at least 1, got {self.replicas}")
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
