"""Connection guards for the built-in engine, as a subclass of uvicorn's HTTP protocol.

uvicorn bounds only the idle time between requests: a client that opens a connection and
sends its headers one byte every few seconds (slowloris) holds it forever. Here a request's
headers must be complete within ``header_timeout`` of its first byte (of the connection, for
the first request), and a connection beyond ``max_connections`` open ones is closed at once.
The body has its own deadline in the ASGI app (``_asgi``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from typing import Any

__all__ = ["guarded_protocol"]

_log = logging.getLogger("edgekit.serve")
_WARN_EVERY_S = 10.0


def _base() -> type[asyncio.Protocol]:
    if importlib.util.find_spec("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def guarded_protocol(*, header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools, else h11) with both guards."""
    base: Any = _base()
    last_warning = [0.0]

    class Guarded(base):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                now = time.monotonic()
                if now - last_warning[0] > _WARN_EVERY_S:
                    last_warning[0] = now
                    _log.warning(
                        "edgekit: %d connections open, closing new ones (--max-connections)",
                        len(self.connections) - 1,
                    )
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()  # the first byte of a new request: its headers are now due
            super().data_received(data)
            if self._header_timer is not None and not self._between_requests():
                self._disarm()  # headers complete: the request is running

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
