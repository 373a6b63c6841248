"""The built-in engine: the ASGI app under uvicorn (httptools parser, uvloop when present)."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from edgekit._errors import require
from edgekit._progress import say

from ._asgi import App
from ._config import ServeConfig, ServeError
from ._guard import guarded_protocol
from ._handler import Handler, load_handler

__all__ = ["Server", "security_warnings", "serve", "startup_line"]

_log = logging.getLogger("edgekit.serve")


def _bind(host: str, port: int) -> socket.socket:
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve --host {host!r}: {exc}") from exc
    family, kind, proto, _, addr = info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick another --port (0 picks a free one), or stop what uses this one",
            host=host,
            port=port,
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(config: ServeConfig, port: int) -> str:
    host = config.host
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if config.tls else 'http'}://{host}:{port}"


def startup_line(url: str, handler: Handler, config: ServeConfig, engine: str) -> str:
    """What the server prints once it listens: URL, models, batching, auth and TLS."""
    models = handler.models
    names = models[0] if len(models) == 1 else f"{models[0]} .. {models[-1]}"
    return (
        f"serving {handler.name} on {url}/v2 ({engine}): {len(models)} models {names} "
        f"(and {handler.name} with parameter 'split'), {handler.backend}, max batch "
        f"{config.max_batch}, max delay {config.max_delay_ms:g} ms; auth: "
        f"{'bearer token' if config.token else 'OFF (no --token-file)'}; TLS: "
        f"{'on' if config.tls else 'off'}"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def security_warnings(config: ServeConfig) -> list[str]:
    """What is unsafe in ``config`` for a server others can reach (empty: nothing)."""
    if _is_loopback(config.host):
        return []
    if config.token and not config.tls:
        return [
            f"the bearer token travels in clear text: this server listens on {config.host} "
            "over plain http; give it --tls-cert and --tls-key (or put a TLS proxy in front)"
        ]
    if not config.token:
        return [
            f"anyone who reaches {config.host}:{config.port} can use this server: "
            "give it a token (--token-file or $EDGEKIT_TOKEN)"
        ]
    return []


def _uvicorn_config(app: App, config: ServeConfig) -> Any:
    uvicorn = require("uvicorn", "serve", purpose="edgekit serve")
    return uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=guarded_protocol(
            header_timeout=config.header_timeout_s, max_connections=config.max_connections
        ),
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        timeout_keep_alive=max(1, round(config.keep_alive_s)),
        timeout_graceful_shutdown=10,
        backlog=2048,
        server_header=False,
    )


def _make_uvicorn(app: App, config: ServeConfig, on_started: Callable[[], None]) -> Any:
    uvicorn = require("uvicorn", "serve", purpose="edgekit serve")

    class _Uvicorn(uvicorn.Server):  # type: ignore[name-defined]
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_started()

    try:
        ucfg = _uvicorn_config(app, config)
        ucfg.load()  # reads the certificate now, so a bad one fails before we announce
    except (OSError, ValueError) as exc:
        raise ServeError(f"cannot set up the HTTP server: {exc}") from exc
    return _Uvicorn(ucfg)


class Server:
    """A server in a background thread: ``with Server(pkg, ServeConfig(port=0)) as s:``.

    Loads the package on :meth:`start` (or ``__enter__``), listens on ``config.host`` and
    ``config.port`` (0 picks a free port: see :attr:`url`) and stops in ``__exit__``.
    """

    def __init__(self, package: str | os.PathLike[str], config: ServeConfig | None = None) -> None:
        self.package = package
        self.config = config or ServeConfig()
        self.handler: Handler | None = None
        self.url = ""
        self._uv: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Server:
        for w in security_warnings(self.config):
            _log.warning("edgekit serve: %s", w)
        handler = load_handler(self.package, self.config)
        try:
            sock = _bind(self.config.host, self.config.port)
        except BaseException:
            for t in handler.tails:
                t.close()
            raise
        self.handler = handler
        self.url = url_of(self.config, sock.getsockname()[1])
        self._uv = _make_uvicorn(App(handler), self.config, self._started.set)

        def run() -> None:
            try:
                self._uv.run(sockets=[sock])
            except BaseException as exc:  # reported to start()'s caller
                self._error = exc
            finally:
                sock.close()
                self._started.set()

        self._thread = threading.Thread(target=run, name="edgekit-serve", daemon=True)
        self._thread.start()
        self._started.wait(60)
        if self._error is not None or not self._uv.started:
            raise ServeError(f"the server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop accepting, finish the requests in flight, release the interpreters."""
        if self._thread is not None:
            self._uv.should_exit = True
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(package: str | os.PathLike[str], config: ServeConfig) -> None:
    """Serve until SIGINT or SIGTERM (in the foreground), then shut down cleanly."""
    for w in security_warnings(config):
        say(f"warning: {w}")
    handler = load_handler(package, config)
    sock = _bind(config.host, config.port)
    url = url_of(config, sock.getsockname()[1])
    uv = _make_uvicorn(
        App(handler), config, lambda: say(startup_line(url, handler, config, "uvicorn"))
    )
    # uvicorn re-raises the signal it caught once it has shut down: make that a no-op.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uv.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    say(f"stopped serving {handler.name}")
