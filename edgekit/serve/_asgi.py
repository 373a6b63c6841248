"""A minimal ASGI app around :class:`Handler`: uvicorn runs it, and so does a Ray Serve
replica (``@serve.ingress``), so both engines share every line of protocol code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._handler import Handler, Reply

__all__ = ["App"]

_log = logging.getLogger("edgekit.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class App:
    """ASGI 3 application: reads the body (up to the limit), asks the handler, replies."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                try:
                    await self.handler.aclose()
                except Exception:  # shutting down anyway: log, do not hang
                    _log.exception("edgekit: error while closing the server")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        h = self.handler
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        reply = h.precheck(method, path, headers)
        if reply is None:
            limit = h.config.max_body_bytes
            chunks: list[bytes] = []
            size = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + h.config.body_timeout_s
            while True:
                try:  # a body trickling in (slowloris) must not hold the connection
                    msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    reply = h.too_slow()
                    break
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    reply = h.too_large()
                    break
                if chunk:
                    chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
            if reply is None:
                reply = await h.handle(method, path, headers, b"".join(chunks))
        await _send(send, reply, head=method == "HEAD")


async def _send(send: Send, reply: Reply, *, head: bool = False) -> None:
    hdrs = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in reply.headers.items()
        if k.lower() != "content-length"
    ]
    hdrs.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": hdrs})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})
