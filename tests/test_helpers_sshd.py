"""The loopback sshd helper (tests/_sshd.py) survives a port taken between pick and bind."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import _sshd
import pytest
from _net import free_port


def test_start_sshd_retries_when_its_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = int(taken.getsockname()[1])
    picks: Iterator[int] = iter([busy, busy])
    given: list[int] = []

    def pick() -> int:  # the first two picks are the port another process holds
        port = next(picks, None) or free_port()
        given.append(port)
        return port

    monkeypatch.setattr(_sshd, "free_port", pick)
    try:
        s = _sshd.start_sshd(tmp_path / "sshd")
    finally:
        taken.close()
    try:
        assert given[:2] == [busy, busy] and len(given) == 3
        assert s.port == given[2] != busy
        _sshd.wait_banner("127.0.0.1", s.port)
    finally:
        s.stop()


def test_start_sshd_gives_up_after_a_bounded_number_of_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = int(taken.getsockname()[1])
    calls: list[int] = []

    def pick() -> int:  # every pick is the port another process holds
        calls.append(busy)
        return busy

    monkeypatch.setattr(_sshd, "free_port", pick)
    try:
        with pytest.raises(_sshd.ServerExited, match=r"(?i)address already in use"):
            _sshd.start_sshd(tmp_path / "sshd")
    finally:
        taken.close()
    assert len(calls) == _sshd.SSHD_PORT_ATTEMPTS
