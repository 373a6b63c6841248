"""The publisher: a second process, started and supervised by the node, that delivers events.

The node (node.py) classifies inputs and commits their events to the outbox; this process
reads the committed rows, publishes them QoS 1 on its own MQTT connection, deletes each one
after its PUBACK and keeps the outbox within its cap. So on a board with more than one core
the delivery (paho's publish, its network thread, the deletes) runs beside the inference,
with its own GIL, instead of between inferences.

It never publishes alone: it asks the kernel to SIGKILL it when the node dies
(``PR_SET_PDEATHSIG``), and it exits at once when its stdin, a pipe from the node, closes.
It ignores SIGTERM and SIGINT (systemd and a terminal send them to the whole group): the
node stops it after its last commit, and it then waits up to ``drain_s`` for PUBACKs.

It also moves the inbox files whose events the node has committed to ``done/`` or ``failed/``
(a rename each: file system work that would otherwise stall the inference), and on its start
those a stop left behind (the outbox records each file with its event).

The pipe, one line each way per message. Node to publisher: the config (JSON, first);
``c N`` (N more rows committed); ``m JSON`` (``[[name, ok, event_id], ...]``: files to move);
``s`` (answer one JSON line of stats on stdout); ``q`` (drain, then exit).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .config import Config
from .inbox import Inbox
from .link import Link
from .outbox import Outbox

__all__ = ["Publisher", "PublisherProcess"]

log = logging.getLogger("iot_node")
FLUSH_ACKED = 64  # PUBACKed rows deleted together (or sooner, when nothing is in flight)
INFLIGHT_POLL_S = 0.001  # how long to wait for a burst of PUBACKs before sending again
PR_SET_PDEATHSIG = 1


class Publisher:
    """Hands committed outbox rows to paho (within the broker's Receive Maximum and
    ``max_inflight``), deletes them on PUBACK, trims the outbox to its cap."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.outbox = Outbox(Path(cfg.state_dir) / "outbox.sqlite3", cfg.outbox_cap, new_boot=False)
        self.link = Link(cfg, events=True)
        self.link.on_connected.append(self._on_connected)
        self._inflight: dict[int, int] = {}  # paho message id -> outbox seq
        self._handed = 0  # the highest outbox seq given to paho
        # Committed rows read ahead, not yet given to paho: one query per max_inflight rows.
        self._ready: collections.deque[tuple[int, str, bytes]] = collections.deque()
        self._acked: list[int] = []  # PUBACKed outbox seqs, not yet deleted
        self._rewind = threading.Event()  # set on connect: hand over from the outbox's start
        self.rejected = 0
        self.inbox = Inbox(Path(cfg.inbox_dir), settle_s=0)
        self.moved = 0

    def recover(self) -> None:
        """Move the committed files still in the inbox: those a stop (or this process's
        death) left, and those the node committed while this process was starting."""
        left = self.inbox.unmoved(self.outbox.committed_files())
        self.move(left)
        if left:
            log.info("moved %d committed inbox files on start", len(left))

    def move(self, files: list[tuple[str, bool, str]]) -> None:
        """Committed inputs ``(name, ok, event_id)`` to done/ or failed/."""
        for name, ok, eid in files:
            self.inbox.finish(name, ok, eid)
        self.moved += len(files)

    def _on_connected(self) -> None:
        self._rewind.set()

    def committed(self, n: int) -> None:
        """The node committed ``n`` more rows: over the cap, the oldest not handed go."""
        self.outbox.depth += n
        if self.outbox.depth - len(self._acked) > self.cfg.outbox_cap:
            self._flush_acked()
            handed = self._ready[-1][0] if self._ready else self._handed
            dropped = self.outbox.trim(handed)  # rows read ahead count as handed: they go
            if dropped:
                cap = self.cfg.outbox_cap
                log.warning("outbox full (%d): dropped the %d oldest events", cap, dropped)

    def _flush_acked(self) -> None:
        acked, self._acked = self._acked, []
        self.outbox.delete(acked)

    def pump(self) -> None:
        """Match PUBACKs to outbox rows and delete them, then hand over more rows."""
        retry = False
        while self.link.acked:
            mid, ok = self.link.acked.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue
            if ok:
                self._acked.append(seq)
            else:
                self.rejected += 1
                retry = True
        if retry:
            log.error("the broker refused events (not authorized?); they stay in the outbox")
        if len(self._acked) >= FLUSH_ACKED or (self._acked and not self._inflight):
            self._flush_acked()
        if self._rewind.is_set() and not self._inflight:
            # A new connection with nothing of ours in flight: start from the outbox's oldest
            # (rows paho still holds are resent by paho itself and stay in _inflight).
            self._rewind.clear()
            self._flush_acked()  # or the rows acked but not yet deleted would go out again
            self._handed = 0
            self._ready.clear()
        limit = min(self.cfg.max_inflight, self.link.send_quota)
        room = limit - len(self._inflight)
        if room > 0 and self.link.connected.is_set():
            if not self._ready:
                self._ready.extend(self.outbox.pending(self._handed, self.cfg.max_inflight))
            ready = self._ready
            while room > 0 and ready:
                seq, topic, payload = ready[0]
                sent = self.link.publish(topic, payload)
                if sent is None:
                    break
                ready.popleft()
                self._inflight[sent] = seq
                self._handed = seq
                room -= 1
        # paho's thread wakes this one once per burst of PUBACKs (half the send limit), and
        # for the last ones in flight.
        self.link.burst = max(1, min(limit // 2, len(self._inflight)))

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "connected": self.link.connected.is_set(),
            "in_flight": len(self._inflight),
            "rejected": self.rejected,
            "moved": self.moved,
        }

    def run(self, orders: collections.deque[str], out: IO[str]) -> None:
        """Serve until ``q``: new rows, stats requests, and the broker's PUBACKs."""
        self.link.start()
        self.recover()
        wake = self.link.wake
        while True:
            while orders:
                order = orders.popleft()
                if order.startswith("c "):
                    self.committed(int(order[2:]))
                elif order.startswith("m "):
                    self.move([(str(n), bool(ok), str(e)) for n, ok, e in json.loads(order[2:])])
                elif order == "s":
                    out.write(json.dumps(self.stats()) + "\n")
                    out.flush()
                elif order == "q":
                    self._drain()
                    return
            self.pump()
            if len(self.link.acked) < self.link.burst and not orders:
                # With events in flight, a short timeout: a broker's PUBACKs can sit in its
                # TCP stack (Nagle) until this side sends again, so do not wait for a burst.
                wake.wait(INFLIGHT_POLL_S if self._inflight else self.cfg.poll_s)
            wake.clear()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.cfg.drain_s
        while self.outbox.count() > len(self._acked) and time.monotonic() < deadline:
            if not self.link.connected.is_set():
                break
            self.pump()
            self.link.wake.wait(0.02)
            self.link.wake.clear()
        self.pump()
        self._flush_acked()
        log.info("publisher stopping: %d events wait for the broker", self.outbox.count())
        self.link.close()
        self.outbox.close()


class PublisherProcess:
    """The node's handle on its publisher: start it, tell it of commits, ask for its stats,
    restart it if it dies (1 s doubling to 30 s), stop it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._backoff = 1.0
        self._restart_at = 0.0
        self._started_at = 0.0

    def start(self) -> None:
        # The publisher imports this package (not edgekit): make it importable as it is here.
        pkg = __package__ or "iot_node"
        top = Path(__file__).resolve().parents[pkg.count(".") + 1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(top), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"{pkg}.publisher", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        self._started_at = time.monotonic()
        self._send(json.dumps(dataclasses.asdict(self.cfg)))

    def _send(self, line: str) -> bool:
        if self.proc is None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(line.encode() + b"\n")
        except (BrokenPipeError, ValueError):
            return False  # it died: check() restarts it
        return True

    def committed(self, n: int, files: list[tuple[str, bool, str]]) -> None:
        """``n`` more rows are committed (the publisher reads them from the outbox), and
        ``files`` (``(name, ok, event_id)``) can leave the inbox."""
        if n:
            self._send(f"c {n}")
        if files:
            self._send("m " + json.dumps(files))

    def check(self) -> None:
        """Called from the node's loop: a publisher that died is started again."""
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if not self._restart_at:
            if now - self._started_at > 60:
                self._backoff = 1.0  # it ran a while: a fresh failure, not a loop
            log.error(
                "the publisher exited (%s); restarting it in %.0f s",
                self.proc.returncode,
                self._backoff,
            )
            self._restart_at = now + self._backoff
            self._backoff = min(30.0, self._backoff * 2)
        elif now >= self._restart_at:
            self._restart_at = 0.0
            self.restarts += 1
            self._close_pipes()
            self.start()

    def stats(self, timeout: float = 0.5) -> dict[str, Any] | None:
        """The publisher's connection and in-flight count (None if it does not answer)."""
        p = self.proc
        if p is None or p.stdout is None or p.poll() is not None or not self._send("s"):
            return None
        fd, got = p.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while not got.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            got += chunk
        last = got.decode().strip().splitlines()[-1]  # an answer that came late is skipped
        return {**json.loads(last), "restarts": self.restarts}

    def stop(self, drain_s: float) -> None:
        """Ask for a drain (up to ``drain_s`` waiting for PUBACKs), then wait for the exit."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None and self._send("q"):
            try:
                p.wait(drain_s + 10)
            except subprocess.TimeoutExpired:
                log.error("the publisher did not stop; killing it")
        if p.poll() is None:
            p.kill()
            p.wait()
        self._close_pipes()
        self.proc = None

    def _close_pipes(self) -> None:
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()


def _die_with(parent: int) -> None:
    """SIGKILL this process when the node dies (Linux); the stdin pipe covers the rest."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the node died before the request took effect
        os._exit(1)


def main() -> None:
    """``python -m iot_node.publisher NODE_PID``, started by the node only."""
    _die_with(int(sys.argv[1]))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stdin = sys.stdin.buffer
    cfg = Config(**json.loads(stdin.readline()))
    pub = Publisher(cfg)
    orders: collections.deque[str] = collections.deque()

    def read() -> None:
        for line in stdin:
            orders.append(line.decode().strip())
            pub.link.wake.set()
        os._exit(0)  # the node is gone: publish nothing more

    threading.Thread(target=read, name="iot-pipe", daemon=True).start()
    pub.run(orders, sys.stdout)
    # Not the interpreter's shutdown: the pipe thread is blocked reading stdin.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
