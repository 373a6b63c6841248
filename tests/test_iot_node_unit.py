"""apps/iot_node's systemd unit, checked by systemd itself (``systemd-analyze verify``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "apps" / "iot_node" / "edgekit-iot-node.service"


def verify(path: Path) -> list[str]:
    """The complaints about ``path`` (verify exits 0 even on errors: read its stderr)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    r = subprocess.run(
        [exe, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in r.stderr.splitlines() if path.name in line]


def test_unit_verifies_and_asks_for_what_the_node_does() -> None:
    assert verify(UNIT) == []
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=edgekit-iot-node",
        "KillSignal=SIGTERM",
    ):
        assert line in text, line


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    bad = tmp_path / "edgekit-iot-node.service"
    bad.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    problems = verify(bad)
    assert problems and any("notifyy" in p for p in problems), problems
