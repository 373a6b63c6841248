"""Waiting on a condition, or on a line from a child process, with a deadline; stopping one."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float, what: str, step: float = 0.02) -> T:
    """Poll ``cond`` until it returns something truthy and return that; fail with ``what``
    after ``timeout`` seconds (``cond`` is tried once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class LineReader:
    """Reads a child process's text stream in a thread, so that the pipe never fills and a
    wait for a line has a deadline (``for line in proc.stderr`` blocks as long as the child
    stays silent)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def wait_for_line(self, marker: str, timeout: float) -> str | None:
        """The first line containing ``marker``; None if the stream ends or ``timeout``
        seconds pass first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if marker in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self._cond.wait(left)

    def join(self, timeout: float) -> None:
        """Wait for the end of the stream (the child exited), at most ``timeout`` seconds."""
        self._thread.join(timeout)

    def tail(self, n: int = 40) -> str:
        with self._cond:
            return "".join(self.lines[-n:])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
