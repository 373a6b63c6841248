"""Progress for long work (training, conversion, pushes, benchmarks), on stderr.

On a terminal the current line is redrawn; in a log (CI) a line is written at most
every ``log_every`` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "say"]


def say(message: str, *, stream: TextIO | None = None) -> None:
    """One line of progress on stderr."""
    print(f"edgekit: {message}", file=stream or sys.stderr, flush=True)


class Progress:
    """A counter with rate and ETA: ``with Progress("epoch 1/5", total=n) as p: p.update(k)``."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "it",
        stream: TextIO | None = None,
        log_every: float = 15.0,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.unit = label, max(1, total), unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every = log_every
        self.enabled = enabled
        self.done = 0
        self.postfix = ""
        self._start = time.monotonic()
        self._last = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        now = time.monotonic()
        if now - self._last >= (0.2 if self.tty else self.log_every):
            self._last = now
            self._draw(final=False)

    def _draw(self, *, final: bool) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._start
        frac = min(1.0, self.done / self.total)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 20)
        text = (
            f"edgekit: {self.label} [{bar:<20}] {frac:4.0%} {self.done}/{self.total} "
            f"{self.unit} {elapsed:5.0f}s"
            + ("" if final else f" eta {eta:4.0f}s")
            + (f"  {self.postfix}" if self.postfix else "")
        )
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._draw(final=True)
