"""Dynamic batching: requests for one model queue up and run together in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BatchStats", "Batcher", "Closed"]

Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Closed(RuntimeError):
    """The server is shutting down; the request was not run."""


@dataclass
class BatchStats:
    """Counters of one model (what ``GET /v2/models/{m}/stats`` reports)."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    failures: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rows": self.rows,
            "batches": self.batches,
            "failures": self.failures,
            "mean_batch_rows": round(self.rows / self.batches, 3) if self.batches else 0.0,
            "queue_ms_total": round(self.queue_ns / 1e6, 3),
            "compute_ms_total": round(self.compute_ns / 1e6, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


class _Item:
    __slots__ = ("fut", "t", "x")

    def __init__(self, x: np.ndarray, fut: asyncio.Future[Any]) -> None:
        self.x = x
        self.fut = fut
        self.t = time.perf_counter()


class Batcher:
    """Collects requests until ``max_batch`` rows or until the oldest has waited
    ``max_delay`` seconds, concatenates them along the batch axis, runs ``run`` once in
    ``executor`` and hands each request its rows.

    The event loop only queues and splits; ``run`` never runs on it. One batch of a
    model is in flight at a time (its interpreters are not thread-safe); requests that
    arrive meanwhile form the next batch, which then starts without waiting.
    """

    def __init__(
        self,
        run: Run,
        *,
        max_batch: int,
        max_delay: float,
        executor: Executor,
    ) -> None:
        self._run = run
        self.max_batch = max(1, int(max_batch))
        self.max_delay = max(0.0, float(max_delay))
        self._executor = executor
        self._queue: deque[_Item] = deque()
        self._rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = BatchStats()

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run ``x`` (batch first, at most ``max_batch`` rows) in the next batch."""
        if self._closed:
            raise Closed("the server is shutting down")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._worker())
        fut: asyncio.Future[tuple[np.ndarray, np.ndarray]] = loop.create_future()
        self._queue.append(_Item(x, fut))
        self._rows += len(x)
        self.stats.requests += 1
        assert self._wake is not None
        self._wake.set()
        return await fut

    async def _worker(self) -> None:
        assert self._wake is not None
        wake, queue = self._wake, self._queue
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            # Wait for more requests until the batch is full or the oldest has waited long
            # enough; a backlog built while the last batch ran goes at once.
            deadline = queue[0].t + self.max_delay
            while self._rows < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            items: list[_Item] = []
            rows = 0
            while queue and (not items or rows + len(queue[0].x) <= self.max_batch):
                it = queue.popleft()
                rows += len(it.x)
                items.append(it)
            self._rows -= rows
            live = [it for it in items if not it.fut.done()]  # cancelled: client gone
            if not live:
                continue
            t0 = time.perf_counter()
            xs = live[0].x if len(live) == 1 else np.concatenate([it.x for it in live])
            try:
                logits, conf = await loop.run_in_executor(self._executor, self._run, xs)
            except asyncio.CancelledError:
                for it in live:
                    if not it.fut.done():
                        it.fut.set_exception(Closed("the server shut down while this ran"))
                raise
            except Exception as exc:
                self.stats.failures += len(live)
                for it in live:
                    if not it.fut.done():
                        it.fut.set_exception(exc)
                continue
            t1 = time.perf_counter()
            st = self.stats
            st.batches += 1
            st.rows += len(xs)
            st.batch_sizes[len(xs)] += 1
            st.compute_ns += int((t1 - t0) * 1e9)
            i = 0
            for it in live:
                n = len(it.x)
                st.queue_ns += int((t0 - it.t) * 1e9)
                if not it.fut.done():
                    it.fut.set_result((logits[i : i + n], conf[i : i + n]))
                i += n

    async def close(self) -> None:
        """Refuse new requests, fail the queued ones with :class:`Closed`, stop the worker."""
        self._closed = True
        while self._queue:
            it = self._queue.popleft()
            if not it.fut.done():
                it.fut.set_exception(Closed("the server is shutting down"))
        self._rows = 0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
