"""The headless web view: a page, the annotated MJPEG stream and two JSON endpoints.

Standard library only (``ThreadingHTTPServer``). Routes: ``/`` (the page), ``/stream.mjpg``,
``/snapshot.jpg``, ``/api/latest``, ``/api/stats``. Anything else is a 404, any method but
GET/HEAD a 405.
"""

from __future__ import annotations

import errno
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

__all__ = ["View", "WebError", "WebView"]

PAGE = (Path(__file__).parent / "page.html").read_text()
BOUNDARY = "edgekitframe"
MAX_STREAMS = 16
STREAM_MAX_FPS = 30.0


class WebError(Exception):
    """The web view could not start (port in use, no permission)."""


class View(Protocol):
    """What the web view shows (the camera, or the split demo)."""

    def latest(self) -> dict[str, Any] | None: ...

    def stats(self) -> dict[str, Any]: ...

    def frame_jpeg(self, after: int = 0, timeout: float = 2.0) -> tuple[int, bytes] | None: ...


class WebView:
    """Serves ``view`` on ``host:port`` (port 0: any free port) in a daemon thread."""

    def __init__(
        self, view: View, host: str = "127.0.0.1", port: int = 8080, title: str = "edgekit camera"
    ) -> None:
        self.view = view
        self.title = title
        self._stopping = threading.Event()
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        handler = type("Handler", (_Handler,), {"web": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise WebError(
                    f"port {port} on {host} is already in use: stop what runs there or pass "
                    "--port with another number (--port 0 picks a free one)"
                ) from None
            if exc.errno == errno.EACCES:
                raise WebError(
                    f"no permission to listen on port {port}: use a port above 1023"
                ) from None
            raise WebError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        addr = self.httpd.server_address
        self.host, self.port = str(addr[0]), int(addr[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="web", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebView:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> WebView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    web: WebView
    protocol_version = "HTTP/1.1"
    server_version = "edgekit-camera"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the app prints its own
        pass

    def _send(self, status: int, ctype: str, body: bytes, head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self, obj: Any, head_only: bool = False) -> None:
        body = json.dumps(obj, allow_nan=False).encode()
        self._send(200, "application/json", body, head_only)

    def do_HEAD(self) -> None:
        self._route(head_only=True)

    def do_GET(self) -> None:
        self._route(head_only=False)

    def _not_allowed(self) -> None:
        body = json.dumps({"error": f"{self.command} is not supported; use GET"}).encode()
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _route(self, head_only: bool) -> None:
        path = self.path.split("?", 1)[0]
        view = self.web.view
        try:
            if path in ("/", "/index.html"):
                page = PAGE.replace("{{TITLE}}", self.web.title).encode()
                self._send(200, "text/html; charset=utf-8", page, head_only)
            elif path == "/api/latest":
                self._json(view.latest(), head_only)
            elif path == "/api/stats":
                self._json(view.stats(), head_only)
            elif path == "/snapshot.jpg":
                got = view.frame_jpeg(0, timeout=2.0)
                if got is None:
                    self._send(503, "application/json", b'{"error": "no frame yet"}', head_only)
                else:
                    self._send(200, "image/jpeg", got[1], head_only)
            elif path == "/stream.mjpg":
                if head_only:
                    self._send(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", b"", True)
                else:
                    self._stream()
            elif path == "/favicon.ico":
                self._send(204, "image/x-icon", b"", head_only)
            else:
                body = json.dumps({"error": f"no such page {path!r}"}).encode()
                self._send(404, "application/json", body, head_only)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self) -> None:
        if not self.web._streams.acquire(blocking=False):
            body = json.dumps({"error": f"at most {MAX_STREAMS} streams at once"}).encode()
            self._send(503, "application/json", body)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            seq = 0
            gap = 1.0 / STREAM_MAX_FPS
            stopping = self.web._stopping
            while not stopping.is_set():
                got = self.web.view.frame_jpeg(seq, timeout=1.0)
                if got is None:
                    continue
                seq, data = got
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                head += f"Content-Length: {len(data)}\r\n\r\n"
                self.wfile.write(head.encode() + data + b"\r\n")
                self.wfile.flush()
                stopping.wait(gap)
        finally:
            self.web._streams.release()
