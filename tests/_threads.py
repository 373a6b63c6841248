"""A session-end check for threads that tests started and never stopped.

A non-daemon thread left running keeps the interpreter alive after the last test (pytest then
hangs at exit), and usually means a server, pump or pool a test forgot to close. Hook it as a
session-scoped autouse fixture in conftest.py::

    @pytest.fixture(scope="session", autouse=True)
    def _no_leftover_threads() -> Iterator[None]:
        from _threads import check_no_leftover_threads, non_daemon_threads

        before = non_daemon_threads()
        yield
        check_no_leftover_threads(before)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable


def non_daemon_threads() -> set[threading.Thread]:
    """The live non-daemon threads other than the main thread."""
    main = threading.main_thread()
    return {t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()}


def leftover_threads(
    before: Iterable[threading.Thread] = (), grace_s: float = 5.0
) -> list[threading.Thread]:
    """Non-daemon threads alive now that were not in ``before``, after giving them
    ``grace_s`` seconds to finish (a pool shutting down, a server's last request)."""
    known = set(before)
    deadline = time.monotonic() + grace_s
    while True:
        left = sorted(non_daemon_threads() - known, key=lambda t: t.name)
        if not left or time.monotonic() >= deadline:
            return left
        for t in left:
            t.join(max(0.0, min(0.2, deadline - time.monotonic())))


def check_no_leftover_threads(
    before: Iterable[threading.Thread] = (), grace_s: float = 5.0
) -> None:
    """AssertionError naming every non-daemon thread started since ``before`` that is still
    running ``grace_s`` seconds from now."""
    left = leftover_threads(before, grace_s)
    if left:
        names = ", ".join(f"{t.name} (target {getattr(t, '_target', None)!r})" for t in left)
        raise AssertionError(f"{len(left)} non-daemon thread(s) left running: {names}")
