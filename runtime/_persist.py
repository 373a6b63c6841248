"""Learned state on disk: validated reads, atomic writes, and saving off the hot path."""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit._errors import StateError

__all__ = ["MAX_STATE_BYTES", "Autosave", "StateError", "read_state", "write_state"]

MAX_STATE_BYTES = 16 << 20  # a sliding-window bandit over 100 arms stays far below this


def _no_constant(name: str) -> float:
    raise StateError(f"it holds {name}, which no valid state has")


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON object saved at ``path``, or None when there is no file.

    Raises :class:`StateError` for anything that is not a small, finite JSON object:
    oversized files, NaN/Infinity, nesting too deep for the parser, non-objects.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"it cannot be read ({exc.strerror})") from None
    if size > MAX_STATE_BYTES:
        raise StateError(f"it is {size} bytes, more than the {MAX_STATE_BYTES} a state may have")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
        s = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise StateError("it is nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(str(exc)) from None
    if not isinstance(s, dict):
        raise StateError("it is not a JSON object")
    return s


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, fsync, rename."""
    data = json.dumps(state, allow_nan=False, separators=(",", ":"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)  # the rename itself survives a power cut
    except OSError:
        pass
    finally:
        os.close(dfd)


def finite(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``value`` as a float in [lo, hi], or :class:`StateError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StateError(f"{what} is {type(value).__name__}, not a number")
    v = float(value)
    if not (lo <= v <= hi):  # also false for NaN
        raise StateError(f"{what} = {value!r} is outside [{lo}, {hi}]")
    return v


def count(value: Any, what: str) -> int:
    """``value`` as a non-negative integer below 2**53."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 53:
        raise StateError(f"{what} = {value!r} is not a count")
    return int(value)


class Autosave:
    """Saves a policy's state from a background thread every ``interval_s`` seconds, and
    once more on :meth:`close`, so ``predict`` never touches the disk.

    ``checkpoint`` is called with ``lock`` held (the lock ``predict`` holds): it copies the
    state and returns a function that writes the copy (or None when nothing changed); the
    write then runs without the lock. At most ``interval_s`` seconds of learning are lost
    when the process is killed.
    """

    def __init__(
        self,
        checkpoint: Callable[[], Callable[[], None] | None],
        lock: threading.Lock,
        interval_s: float,
    ) -> None:
        if not interval_s > 0 or math.isinf(interval_s):
            raise ValueError(f"save interval {interval_s!r} s must be a positive number")
        self._checkpoint = checkpoint
        self._lock = lock
        self._interval = float(interval_s)
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="edgekit-autosave", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.save()

    def save(self) -> None:
        """Save now if anything changed (a failure warns once and is retried next time)."""
        with self._lock:
            write = self._checkpoint()
        if write is None:
            return
        try:
            write()
        except (OSError, ValueError) as exc:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"edgekit: cannot save the bandit state ({exc}); will retry",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def close(self) -> None:
        """Stop the thread and save what is left (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.save()
