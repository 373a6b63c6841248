"""The on-disk outbox: events are committed here before they are published, and deleted only
after the broker's PUBACK, so a broker outage, a SIGKILL or a reboot loses nothing.

One SQLite file in WAL mode, opened by two processes: the node's (``add``: each batch of
events in one transaction, ``synchronous=FULL``, so the fsync is shared) and the publisher's
(``pending``, ``delete`` after PUBACK without an fsync: losing a delete only means a resend;
``trim``). When more than ``cap`` events wait, ``trim`` drops the oldest not yet handed to
the broker and counts them (``dropped``, kept across restarts).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["Outbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,
    ident TEXT NOT NULL,
    ok INTEGER NOT NULL,
    event_id TEXT NOT NULL
);
"""
SEEN_KEEP = 10_000  # command/request ids and committed inbox files remembered (the newest)


class Outbox:
    """Events waiting for their PUBACK, plus the node's few counters (boot, dropped)."""

    def __init__(self, path: str | Path, cap: int, *, new_boot: bool = True) -> None:
        """``new_boot``: count a start of the node (the publisher's connection does not)."""
        if cap < 1:
            raise ValueError(f"outbox cap must be at least 1, not {cap}")
        self.cap = cap
        # timeout: the other process may hold the write lock for one commit (an fsync)
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._synchronous = "FULL"
        self._db.executescript(_SCHEMA)
        with self._tx():
            self.boot = self._meta("boot") + int(new_boot)
            self._set_meta("boot", self.boot)
        self.dropped = self._meta("dropped")
        self.depth = self.count()

    def count(self) -> int:
        """Events waiting now (committed, not yet acknowledged), whichever process wrote."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dropped_total(self) -> int:
        """Events the cap has dropped, ever (``trim`` counts them, in either process)."""
        return self._meta("dropped")

    def _tx(self) -> sqlite3.Connection:
        # ``with conn:`` commits or rolls back; BEGIN makes the block one transaction.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add(
        self,
        events: Sequence[tuple[str, str, bytes]],
        *,
        seen: Iterable[str] = (),
        acked: Sequence[int] = (),
        files: Sequence[tuple[str, str, int, str]] = (),
    ) -> int:
        """Commit ``(event_id, topic, payload)`` rows (an event id already here is kept once)
        and the ``seen`` ids, in one durable transaction; return how many rows were new.

        ``files``: ``(name, identity, ok, event_id)`` of the inbox files these events are of,
        recorded in the same transaction: a restart moves such a file instead of reading it
        again (``committed_files``).

        ``acked``: events the broker acknowledged, deleted in the same transaction (so
        PUBACKs cost no commit of their own while inputs keep coming in one process).
        """
        self._sync("FULL")
        with self._tx():
            if acked:
                self._delete(acked)
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
                events,
            )
            added = self._db.total_changes - before
            self.depth += added
            self._db.executemany("INSERT OR IGNORE INTO seen (id) VALUES (?)", ((s,) for s in seen))
            if files:
                self._db.executemany(
                    "INSERT OR REPLACE INTO files (name, ident, ok, event_id) VALUES (?, ?, ?, ?)",
                    files,
                )
        return added

    def committed_files(self) -> dict[str, tuple[str, bool, str]]:
        """The inbox files of the newest commits: name -> (identity, ok, event id)."""
        rows = self._db.execute("SELECT name, ident, ok, event_id FROM files").fetchall()
        return {n: (i, bool(ok), e) for n, i, ok, e in rows}

    def trim(self, handed: int) -> int:
        """Keep at most ``cap`` events: drop the oldest above ``handed`` (the last sequence
        number given to the MQTT client: those are in flight and are not dropped), count
        them in ``dropped``; return how many went."""
        self._sync("NORMAL")  # a lost trim is redone at the next one
        with self._tx():
            self.depth = self.count()
            excess = self.depth - self.cap
            if excess <= 0:
                return 0
            cur = self._db.execute(
                "DELETE FROM outbox WHERE seq IN "
                "(SELECT seq FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?)",
                (handed, excess),
            )
            dropped = cur.rowcount
            self.depth -= dropped
            self.dropped = self._meta("dropped") + dropped
            self._set_meta("dropped", self.dropped)
        return dropped

    def pending(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` waiting events with a sequence number above ``after``, oldest first."""
        return self._db.execute(
            "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def delete(self, seqs: Sequence[int]) -> None:
        """Forget events the broker acknowledged."""
        if not seqs:
            return
        # A delete lost to a power cut only means a resend (same event id): no fsync for it.
        # The next add's FULL commit makes it durable anyway.
        self._sync("NORMAL")
        with self._tx():
            self._delete(seqs)

    def _delete(self, seqs: Sequence[int]) -> None:
        before = self._db.total_changes
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", ((s,) for s in seqs))
        self.depth -= self._db.total_changes - before

    def _sync(self, mode: str) -> None:
        if mode != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def seen(self, ident: str) -> bool:
        """Whether a command or request id was already applied."""
        return self._db.execute("SELECT 1 FROM seen WHERE id = ?", (ident,)).fetchone() is not None

    def trim_seen(self) -> None:
        """Forget all but the newest ``SEEN_KEEP`` command/request ids and inbox files."""
        with self._tx():
            for table in ("seen", "files"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?",
                    (SEEN_KEEP,),
                )

    def close(self) -> None:
        self._db.close()
