"""A raw-socket stand-in for ``edgekit serve`` (unit-level fault injection).

``FakeServer`` answers infer requests on loopback the way a working, slow or broken server
would: ``mode`` ok, garbage bytes, HTTP 500 or 401 with a JSON error, a body of the wrong
shape, NaN, or a dropped connection; ``delay`` seconds before each answer. Used by
test_offload_faults (every failure) and test_split_hierarchy (a link that slows).
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from edgekit import _kserve as kserve

__all__ = ["FakeServer"]


class FakeServer:
    """Speaks just enough HTTP/1.1 keep-alive to answer infer requests as ``mode`` says."""

    def __init__(self, mode: str = "ok", delay: float = 0.0, n_classes: int = 10) -> None:
        self.mode = mode
        self.delay = delay
        self.n_classes = n_classes
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stop:  # closed by close()
                    return
                raise
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _read(conn: socket.socket) -> tuple[str, dict[str, str], bytes] | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip()] = v.strip()
        n = int(headers.get("Content-Length", "0"))
        while len(body) < n:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return lines[0].split()[1], headers, body

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop:
                try:
                    req = self._read(conn)
                except ConnectionError:  # the client dropped the connection (no timeouts here)
                    return
                if req is None:
                    return
                self.requests.append(req)
                if not self._answer(conn, *req):
                    return

    def _answer(self, conn: socket.socket, path: str, headers: dict[str, str], body: bytes) -> bool:
        mode = self.mode
        if self.delay:
            time.sleep(self.delay)
        if mode == "drop":
            return False
        if mode == "garbage":
            conn.sendall(b"\x00\x17 this is not HTTP\r\n\r\n")
            return False
        if mode in ("500", "401"):
            status = {"500": "500 Internal Server Error", "401": "401 Unauthorized"}[mode]
            msg = kserve.error_body("boom" if mode == "500" else "missing bearer token")
            conn.sendall(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(msg)}\r\n\r\n".encode()
                + msg
            )
            return True
        req = kserve.decode_infer_request(body, headers)
        n = self.n_classes if mode != "badshape" else 3
        logits = np.zeros((1, n), np.float32)
        logits[0, 3 % n] = 5.0
        if mode == "nan":
            logits[0, 0] = np.nan
        conf = np.array([0.9], np.float32)
        out, hdrs = kserve.encode_infer_response(
            "m", {"logits": logits, "confidence": conf}, binary=req.binary_output
        )
        conn.sendall(
            b"HTTP/1.1 200 OK\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode()
            + b"\r\n"
            + out
        )
        return True

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
