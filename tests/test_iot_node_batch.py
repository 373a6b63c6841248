"""The node's group commit, in process (a real package and a real outbox, no broker needed):
a batch is cut at ``batch_s`` and its rest carried into the next one, PUBACKed rows can be
deleted inside a commit, the cap is kept across the two processes' connections, and nothing
is lost or given two event ids."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

APPS = Path(__file__).resolve().parents[1] / "apps"

pytest.importorskip("paho.mqtt.client")


@pytest.fixture
def iot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(APPS))
    import iot_node.config
    import iot_node.node
    import iot_node.outbox

    yield iot_node
    for name in [m for m in sys.modules if m == "iot_node" or m.startswith("iot_node.")]:
        del sys.modules[name]


def _drop(inbox: Path, n: int, shape: tuple[int, ...]) -> list[str]:
    rng = np.random.default_rng(1)
    names = []
    for i in range(n):
        img = rng.integers(0, 256, shape[:2], dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        (inbox / f"in{i:03d}.png").write_bytes(buf.getvalue())
        names.append(f"in{i:03d}.png")
    return names


def _node(iot: Any, tmp_path: Path, pkg: Path, **kw: Any) -> Any:
    cfg = iot.config.Config(
        device="batch",
        package=str(pkg),
        policy="full",
        state_dir=str(tmp_path / "state"),
        inbox=str(tmp_path / "inbox"),
        settle_s=0.0,
        **kw,
    )
    return iot.node.Node(cfg)


def _events(state: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(state / "outbox.sqlite3")
    try:
        rows = db.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


def _move_committed(iot: Any, node: Any) -> list[tuple[str, bool, str]]:
    """What the publisher does when it starts: move the files the outbox says are committed."""
    box = iot.outbox.Outbox(node.outbox_path, cap=10, new_boot=False)
    try:
        left = node.inbox.unmoved(box.committed_files())
    finally:
        box.close()
    for name, ok, eid in left:
        node.inbox.finish(name, ok, eid)
    return left


def test_batch_cut_at_batch_s_carries_the_rest(iot: Any, tmp_path: Path, digits_pkg: Path) -> None:
    node = _node(iot, tmp_path, digits_pkg, batch=8, batch_s=1e-9)
    try:
        shape = tuple(node.model.manifest.input.shape)
        names = _drop(node.inbox.root, 6, shape)
        items = node._gather()
        assert len(items) == 6
        node._process(items)
        # The deadline passed at once: one input committed, five carried (still in the inbox).
        assert node.outbox.depth == 1
        assert len(node._carry) == 5
        assert sorted(node.inbox.pending) == names[:1]
        rounds = 1
        while node._carry:
            carried = [i.event_id for i in node._carry]
            items = node._gather()
            assert [i.event_id for i in items][: len(carried)] == carried  # same ids, first
            node._process(items)
            rounds += 1
        assert rounds == 6
        assert not node._gather()  # all committed: none is read again
    finally:
        node._shutdown()
    events = _events(tmp_path / "state")
    assert [e["source"] for e in events] == [f"inbox:{n}" for n in names]
    assert len({e["event_id"] for e in events}) == 6
    assert all(e["ok"] for e in events)
    # No publisher ran: the files wait in the inbox, and its start would move them all.
    assert sorted(name for name, ok, _ in _move_committed(iot, node) if ok) == names
    assert sorted(p.name for p in node.inbox.done.iterdir()) == names
    assert not [p for p in node.inbox.root.iterdir() if p.is_file()]


def test_shutdown_finishes_the_carried_inputs(iot: Any, tmp_path: Path, digits_pkg: Path) -> None:
    node = _node(iot, tmp_path, digits_pkg, batch=8, batch_s=1e-9, drain_s=0.1)
    shape = tuple(node.model.manifest.input.shape)
    _drop(node.inbox.root, 4, shape)
    node._process(node._gather())
    assert node._carry
    node._shutdown()
    assert len(_events(tmp_path / "state")) == 4
    assert len(_move_committed(iot, node)) == 4
    assert len(list(node.inbox.done.iterdir())) == 4


def test_committed_files_are_not_read_again_nor_after_a_restart(
    iot: Any, tmp_path: Path, digits_pkg: Path
) -> None:
    """A file whose event is committed stays in the inbox until the publisher moves it: no
    listing takes it again, nor does the next start (the outbox recorded it with its event);
    a new file dropped under a moved one's name is a new input."""
    node = _node(iot, tmp_path, digits_pkg, batch=4, drain_s=0.1)
    shape = tuple(node.model.manifest.input.shape)
    try:
        names = _drop(node.inbox.root, 10, shape)
        first = node._gather()
        assert [i.file for i in first] == names[:4]
        node._process(first)
        node.inbox._queue = []  # the next take lists the folder again
        second = node._gather()
        assert [i.file for i in second] == names[4:8]
        node._process(second)
    finally:
        node._shutdown()
    assert len(_events(tmp_path / "state")) == 8

    node = _node(iot, tmp_path, digits_pkg, batch=4, drain_s=0.1)
    try:
        assert sorted(node.inbox.pending) == names[:8]
        rest = node._gather()
        assert [i.file for i in rest] == names[8:]
        node._process(rest)
        assert not node._gather()
        moved = _move_committed(iot, node)
        assert sorted(n for n, _, _ in moved) == names
        # The same name again, a new file: read as a new input, under a new event id.
        _drop(node.inbox.root, 1, shape)
        node.inbox._queue = []
        again = node._gather()
        assert [i.file for i in again] == names[:1]
        node._process(again)
    finally:
        node._shutdown()
    events = _events(tmp_path / "state")
    assert [e["source"] for e in events] == [f"inbox:{n}" for n in [*names, names[0]]]
    assert len({e["event_id"] for e in events}) == 11
    assert sorted(n for n, _, _ in _move_committed(iot, node)) == names[:1]
    assert sorted(p.name for p in node.inbox.done.iterdir())[:2] == sorted(
        [names[0], f"in000.{events[-1]['event_id']}.png"]
    )


def test_acked_rows_are_deleted_inside_the_next_commit(iot: Any, tmp_path: Path) -> None:
    box = iot.outbox.Outbox(tmp_path / "o.sqlite3", cap=10)
    try:
        assert box.add([(f"e{i}", "t", b"{}") for i in range(4)]) == 4
        assert box.depth == 4
        first = [r[0] for r in box.pending(0, 2)]
        box.add([(f"e{i}", "t", b"{}") for i in range(4, 10)], acked=first)
        assert box.depth == 8
        assert [r[0] for r in box.pending(0, 100)][:1] == [first[-1] + 1]
        # The cap counts only what is really waiting: deleting first makes room, nothing drops.
        more = [(f"e{i}", "t", b"{}") for i in range(10, 14)]
        box.add(more, acked=[3, 4])
        assert box.trim(handed=first[-1]) == 0
        assert box.depth == 10 and box.dropped == 0
    finally:
        box.close()


def test_trim_drops_the_oldest_not_handed_and_counts_across_processes(
    iot: Any, tmp_path: Path
) -> None:
    """The node's connection commits, the publisher's trims: the count is the outbox's own,
    rows up to ``handed`` (in flight) stay, and ``dropped`` is kept for the other to read."""
    node = iot.outbox.Outbox(tmp_path / "o.sqlite3", cap=4)
    pub = iot.outbox.Outbox(tmp_path / "o.sqlite3", cap=4, new_boot=False)
    try:
        assert pub.boot == node.boot == 1
        node.add([(f"e{i}", "t", b"{}") for i in range(10)])
        assert pub.trim(handed=2) == 6  # seq 1-2 in flight; 3-8 dropped; 9-10 stay
        assert [r[0] for r in pub.pending(0, 100)] == [1, 2, 9, 10]
        assert node.dropped_total() == 6 and node.count() == 4
        assert pub.trim(handed=2) == 0
    finally:
        node.close()
        pub.close()
    again = iot.outbox.Outbox(tmp_path / "o.sqlite3", cap=4)
    try:
        assert again.boot == 2 and again.dropped == 6 and again.depth == 4
    finally:
        again.close()


@pytest.mark.parametrize("bad", [0.0, -1.0, 61.0, float("nan")])
def test_batch_s_out_of_range_says_so(iot: Any, bad: float) -> None:
    with pytest.raises(iot.config.ConfigError, match="batch_s"):
        iot.config.Config(device="x", batch_s=bad)
