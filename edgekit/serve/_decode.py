"""Decoding infer requests without stalling the event loop.

A small body is decoded in place. A large one, or a compressed one that inflates beyond
``inline`` bytes, is decoded in a worker process: ``json.loads`` of a few megabytes holds
the GIL for most of a second, which in a thread would still stall the event loop (and with
it ``/v2/health/live``). At most ``max_pending`` large decodes wait at once; more get 503.

The workers are forked when the decoder is made (so a user's script needs no
``if __name__ == "__main__"`` guard, which spawned workers would), and only ever run
:func:`decode_infer_request`. Where fork does not exist (or with ``processes=False``),
threads do the work instead.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from edgekit._kserve import InferRequest, ProtocolError, decode_infer_request, decompress

__all__ = ["Decoder"]

INLINE = 256 << 10  # bytes (decompressed) decoded on the event loop


def _job(
    body: bytes, headers: dict[str, str], limit: int, max_rows: int
) -> InferRequest | tuple[int, str]:
    """Runs in a worker: the request, or (status, message) of its ProtocolError."""
    try:
        return decode_infer_request(body, headers, limit=limit, max_rows=max_rows)
    except ProtocolError as exc:
        return exc.status, exc.message + (f" ({exc.hint})" if exc.hint else "")


class Decoder:
    """Decodes infer requests for one handler (``limit`` bytes, ``max_rows`` rows)."""

    def __init__(
        self,
        *,
        limit: int,
        max_rows: int,
        workers: int | None = None,
        max_pending: int | None = None,
        inline: int = INLINE,
        processes: bool = True,
    ) -> None:
        self.limit, self.max_rows, self.inline = limit, max_rows, inline
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.max_pending = max_pending or 4 * self.workers
        self._pending = 0
        self._pool: Executor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._processes = processes
        self._executor()  # fork now, while the process is small and quiet

    async def decode(self, body: bytes, headers: Mapping[str, str]) -> InferRequest:
        """Decode ``body`` (``headers`` with lower-case names); ProtocolError if it is bad."""
        enc = headers.get("content-encoding")
        raw: bytes | None = body if len(body) <= self.inline else None
        if enc is not None and raw is not None:
            try:  # bounded work on the loop: at most `inline` bytes come out
                raw = decompress(body, enc, limit=self.inline)
            except ProtocolError as exc:
                if exc.status != 413:
                    raise
                raw = None
            else:
                headers = {k: v for k, v in headers.items() if k != "content-encoding"}
        if raw is not None:
            return decode_infer_request(raw, headers, limit=self.limit, max_rows=self.max_rows)
        if self._pending >= self.max_pending:
            raise ProtocolError(
                f"the server is busy decoding {self._pending} large requests; retry shortly",
                status=503,
            )
        self._pending += 1
        try:
            out = await self._submit(body, dict(headers))
        finally:
            self._pending -= 1
        if isinstance(out, tuple):
            raise ProtocolError(out[1], status=out[0])
        return out

    async def _submit(self, body: bytes, headers: dict[str, str]) -> InferRequest | tuple[int, str]:
        job = functools.partial(_job, body, headers, self.limit, self.max_rows)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), job)
        except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh
            with self._lock:
                self._pool = None
            raise ProtocolError("the request could not be decoded; retry", status=503) from None

    def _executor(self) -> Executor:
        with self._lock:
            if self._closed:
                raise ProtocolError("the server is shutting down", status=503)
            if self._pool is None:
                self._pool = _start(self.workers, self._processes)
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (decodes in flight are cancelled)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _init_worker() -> None:
    """In a forked worker: close the parent's sockets (listeners, client connections), so a
    connection the server closes is really closed (the worker's own queues are pipes), and
    exit when the parent is gone, however it died."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="edgekit-decode-watch", daemon=True).start()
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except (ValueError, OSError):
            pass


def _start(workers: int, processes: bool) -> Executor:
    forkable = "fork" in multiprocessing.get_all_start_methods() and os.path.isdir("/proc/self/fd")
    if not (processes and forkable):
        return ThreadPoolExecutor(workers, thread_name_prefix="edgekit-decode")
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker
    )
    pool.submit(int).result()  # forks every worker now (fork pools start them all at once)
    return pool
