"""The split-computing client: send a stage's 8-bit input to ``edgekit serve``.

Standard library HTTP only (``http.client``, one keep-alive connection, reopened after a
failure), the KServe v2 codec in :mod:`edgekit._kserve`, and a circuit breaker so that a server
that is down or slow costs a few inputs, not every input. Nothing here raises on a
network or server failure: :meth:`OffloadClient.infer` returns an :class:`OffloadFailure`
and the model finishes the input on the device.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import random
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import quote, urlsplit

import numpy as np

from edgekit import _kserve
from edgekit._package import QuantParams

__all__ = [
    "CircuitBreaker",
    "OffloadClient",
    "OffloadConfig",
    "OffloadFailure",
    "OffloadReply",
]

_log = logging.getLogger("edgekit")


@dataclass(frozen=True)
class OffloadConfig:
    """Where and how to offload.

    ``url``: ``http://HOST:PORT`` or ``https://...`` (a path prefix is kept, for servers
    behind a reverse proxy). ``token``: sent as ``Authorization: Bearer TOKEN``.
    ``timeout_ms``: the deadline of one request (connect, send, answer); past it the
    device finishes the input itself. ``ca_file``: certificates to verify an https server
    with (default: the system's). ``compress``: ``"auto"`` (deflate when it saves at least
    10%, as ReLU features at the zero point do), ``"always"`` or ``"never"``.

    The circuit breaker opens after ``failures`` consecutive failures; it then lets one
    probe through after ``backoff_ms`` (doubling after every failed probe, up to
    ``max_backoff_ms``, each delay spread by +-``jitter``) and closes when a probe succeeds.
    """

    url: str
    token: str | None = None
    timeout_ms: float = 1000.0
    ca_file: str | None = None
    compress: str = "auto"
    failures: int = 3
    backoff_ms: float = 1000.0
    max_backoff_ms: float = 60000.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        u = urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(
                f"offload URL {self.url!r} is not http://HOST:PORT or https://HOST:PORT"
            )
        if self.compress not in ("auto", "always", "never"):
            raise ValueError("compress must be 'auto', 'always' or 'never'")
        if self.timeout_ms <= 0 or self.failures < 1 or self.backoff_ms <= 0:
            raise ValueError("timeout_ms and backoff_ms must be > 0 and failures >= 1")


@dataclass(frozen=True)
class OffloadReply:
    """The server's answer: the last exit's label and confidence, and what it cost."""

    label: int
    confidence: float
    logits: np.ndarray
    bytes_sent: int
    rtt_s: float


@dataclass(frozen=True)
class OffloadFailure:
    """No usable answer: ``kind`` is ``open`` (the breaker did not let it try),
    ``refused``, ``timeout``, ``network``, ``http`` (a 4xx/5xx) or ``garbage``."""

    kind: str
    message: str
    bytes_sent: int
    rtt_s: float


OffloadResult = Union[OffloadReply, OffloadFailure]


class CircuitBreaker:
    """closed -> open after ``failures`` consecutive failures -> half-open (one probe)
    after a backoff that doubles with every failed probe (with jitter) -> closed on a
    success. ``ready()`` is a pure query; ``success``/``failure`` record outcomes."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self,
        failures: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        jitter: float = 0.2,
        *,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.threshold = failures
        self.base = backoff_s
        self.cap = max_backoff_s
        self.jitter = jitter
        self.clock = clock
        self._rng = random.Random(seed)
        self._state = self.CLOSED
        self.consecutive = 0
        self.backoff = backoff_s
        self.retry_at = 0.0
        self.opened = 0  # how many times it opened

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self.clock() >= self.retry_at:
            return self.HALF_OPEN
        return self._state

    def ready(self) -> bool:
        """May a request go out now (closed, or half-open for a probe)?"""
        return self._state == self.CLOSED or self.clock() >= self.retry_at

    def success(self) -> None:
        if self._state != self.CLOSED:
            _log.warning("edgekit: offload server answers again; offloading resumes")
        self._state = self.CLOSED
        self.consecutive = 0
        self.backoff = self.base

    def failure(self) -> None:
        self.consecutive += 1
        if self._state == self.OPEN:  # a failed probe: wait longer next time
            self.backoff = min(self.cap, self.backoff * 2.0)
        elif self.consecutive < self.threshold:
            return
        self._state = self.OPEN
        self.opened += 1
        delay = self.backoff * (1.0 + self.jitter * (2.0 * self._rng.random() - 1.0))
        self.retry_at = self.clock() + delay
        _log.warning(
            "edgekit: offload server failed %d time(s) in a row; inputs run on the device "
            "for %.1f s before one is sent again",
            self.consecutive,
            delay,
        )


class OffloadClient:
    """One keep-alive connection to a KServe v2 server that runs a package's tails.

    The connection opens on first use and again after any failure. ``infer`` never
    raises for network, protocol or server trouble: it returns :class:`OffloadFailure`,
    counts it, and feeds the circuit breaker.
    """

    def __init__(
        self, config: OffloadConfig, package: str, package_sha256: str, n_classes: int
    ) -> None:
        self.config = config
        u = urlsplit(config.url)
        self._https = u.scheme == "https"
        self._host = u.hostname or ""
        self._port = u.port or (443 if self._https else 80)
        self._prefix = u.path.rstrip("/")
        self._package = package
        self._sha = package_sha256
        self._n_classes = n_classes
        self._timeout = config.timeout_ms / 1e3
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=config.ca_file)
        self._conn: http.client.HTTPConnection | None = None
        host = f"[{self._host}]" if ":" in self._host else self._host
        default = 443 if self._https else 80
        self._headers = {"Host": host if self._port == default else f"{host}:{self._port}"}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
            if not self._https and not _is_loopback(self._host):
                warnings.warn(
                    f"edgekit: the offload token is sent in clear text over http:// to "
                    f"{self._host}; anyone on the path can read it. Use https:// (and "
                    "offload_ca) for a server that is not on this machine",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._paths: dict[int, str] = {}
        self._zgain: dict[int, float] = {}  # per split: compressed / raw, last time tried
        self._zcount: dict[int, int] = {}
        self.breaker = CircuitBreaker(
            config.failures,
            config.backoff_ms / 1e3,
            config.max_backoff_ms / 1e3,
            config.jitter,
        )
        self.requests = 0
        self.failures: dict[str, int] = {}
        self.skipped = 0
        self.bytes_raw = 0  # bodies before compression, of requests sent
        self.bytes_sent = 0  # what went on the wire (request line, headers, body)
        self.compressed = 0
        self.connections = 0
        self.last_error: str | None = None

    # -- the request -------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the breaker lets a request go out now."""
        return self.breaker.ready()

    def infer(self, split: int, x: np.ndarray, q: QuantParams) -> OffloadResult:
        """Send ``x`` (the 8-bit input of stage ``split``, batch first, quantized by ``q``)
        and return the server's answer, or why there is none."""
        if not self.breaker.ready():
            self.skipped += 1
            return OffloadFailure("open", "the circuit breaker is open", 0, 0.0)
        t0 = time.perf_counter()
        sent = 0
        try:
            body, headers = self._encode(split, x, q)
            reused = self._conn is not None
            try:
                status, rheaders, rbody, sent = self._exchange(split, body, headers, t0)
            except (BrokenPipeError, ConnectionResetError):  # incl. RemoteDisconnected
                if not reused:
                    raise
                # The server closed an idle keep-alive connection: once more on a new one.
                self._drop()
                status, rheaders, rbody, sent = self._exchange(split, body, headers, t0)
            reply = self._decode(status, rheaders, rbody, sent, t0)
        except Exception as exc:  # every failure becomes a local fallback, never an error
            self._drop()
            kind, msg = _classify(exc)
            return self._failed(kind, msg, sent, t0)
        if isinstance(reply, OffloadFailure):
            self._drop()
            return self._failed(reply.kind, reply.message, sent, t0)
        self.breaker.success()
        self.last_error = None
        return reply

    def _encode(self, split: int, x: np.ndarray, q: QuantParams) -> tuple[bytes, dict[str, str]]:
        body, headers = _kserve.encode_split_request(
            x, scale=q.scale, zero_point=q.zero_point, package_sha256=self._sha
        )
        raw = len(body)
        self.bytes_raw += raw
        mode = self.config.compress
        if mode == "never":
            return body, headers
        if mode == "auto":
            # Try while compressing pays; when it has not, only now and then.
            n = self._zcount.get(split, 0)
            self._zcount[split] = n + 1
            if self._zgain.get(split, 0.0) >= 0.9 and n % 32:
                return body, headers
        small = _kserve.compress(body, "deflate", 1)
        self._zgain[split] = len(small) / raw
        if mode == "always" or len(small) < 0.9 * raw:
            headers["Content-Encoding"] = "deflate"
            headers["Content-Length"] = str(len(small))
            self.compressed += 1
            return small, headers
        return body, headers

    def _exchange(
        self, split: int, body: bytes, headers: dict[str, str], t0: float
    ) -> tuple[int, dict[str, str], bytes, int]:
        conn = self._connection()
        left = self._timeout - (time.perf_counter() - t0)
        if left <= 0:
            raise TimeoutError("the deadline passed before the request was sent")
        if conn.sock is None:
            conn.timeout = left
            conn.connect()
            self.connections += 1
            left = max(1e-3, self._timeout - (time.perf_counter() - t0))
        assert conn.sock is not None
        conn.sock.settimeout(left)
        path = self._path(split)
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        hdrs = {**self._headers, **headers}
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        # request line, headers and blank line as http.client writes them, then the body
        sent = len(path) + 16 + sum(len(k) + len(v) + 4 for k, v in hdrs.items()) + 2 + len(body)
        self.requests += 1
        self.bytes_sent += sent
        resp = conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self._drop()
        return resp.status, dict(resp.getheaders()), data, sent

    def _decode(
        self, status: int, headers: dict[str, str], body: bytes, sent: int, t0: float
    ) -> OffloadResult:
        rtt = time.perf_counter() - t0
        if status != 200:
            msg = _kserve.decode_error(body, headers)
            return OffloadFailure("http", f"HTTP {status}: {msg}"[:300], sent, rtt)
        out = _kserve.decode_infer_response(body, headers)
        logits, conf = out.get(_kserve.LOGITS), out.get(_kserve.CONFIDENCE)
        if logits is None or conf is None:
            return OffloadFailure("garbage", f"outputs {sorted(out)}: no logits", sent, rtt)
        lg = np.asarray(logits, np.float64)
        cf = np.asarray(conf, np.float64).ravel()
        if lg.shape != (1, self._n_classes) or cf.shape != (1,):
            return OffloadFailure(
                "garbage",
                f"logits of shape {lg.shape} and confidence of shape {cf.shape}; expected "
                f"(1, {self._n_classes}) and (1,)",
                sent,
                rtt,
            )
        c = float(cf[0])
        if not (np.isfinite(lg).all() and 0.0 <= c <= 1.0 + 1e-6):
            return OffloadFailure("garbage", f"non-finite logits or confidence {c}", sent, rtt)
        return OffloadReply(int(lg[0].argmax()), min(c, 1.0), lg[0], sent, rtt)

    def _failed(self, kind: str, msg: str, sent: int, t0: float) -> OffloadFailure:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if self.last_error is None:
            _log.warning(
                "edgekit: offload to %s failed (%s: %s); the device finishes the input",
                self.config.url,
                kind,
                msg,
            )
        else:
            _log.debug("edgekit: offload failed again (%s: %s)", kind, msg)
        self.last_error = f"{kind}: {msg}"
        self.breaker.failure()
        return OffloadFailure(kind, msg, sent, time.perf_counter() - t0)

    # -- the connection ------------------------------------------------------------------

    def _path(self, split: int) -> str:
        p = self._paths.get(split)
        if p is None:
            name = quote(_kserve.model_name(self._package, split), safe="")
            self._paths[split] = p = self._prefix + _kserve.infer_path(name)
        return p

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def health(self) -> bool:
        """``GET /v2/health/ready`` on a fresh connection: is the server ready?"""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        kw: dict[str, Any] = {"context": self._ssl} if self._https else {}
        conn = cls(self._host, self._port, timeout=self._timeout, **kw)
        try:
            conn.request("GET", self._prefix + "/v2/health/ready", headers=self._headers)
            r = conn.getresponse()
            r.read()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        b = self.breaker
        return {
            "url": self.config.url,
            "requests": self.requests,
            "failures": dict(self.failures),
            "failed": sum(self.failures.values()),
            "skipped_while_open": self.skipped,
            "bytes_sent": self.bytes_sent,
            "bytes_uncompressed": self.bytes_raw,
            "compressed_requests": self.compressed,
            "connections": self.connections,
            "breaker": {
                "state": b.state,
                "opened": b.opened,
                "consecutive_failures": b.consecutive,
            },
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self._drop()


def _classify(exc: BaseException) -> tuple[str, str]:
    """A short kind and message for a failed request."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused (is the server running?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout", "no answer before the deadline"
    if isinstance(exc, OSError):  # reset, unreachable, TLS, ...
        return "network", f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, (http.client.HTTPException, ValueError, KeyError, TypeError)):
        return "garbage", f"unreadable answer: {type(exc).__name__}: {exc}"[:300]
    _log.warning("edgekit: unexpected offload error", exc_info=exc)
    return "error", f"{type(exc).__name__}: {exc}"[:300]


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
