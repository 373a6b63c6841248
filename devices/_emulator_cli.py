"""``edgekit device emulate``: the virtual arm64 Raspberry Pi (see _emulator.py)."""

from __future__ import annotations

import argparse


def register(device_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``emulate start|stop|status`` under ``edgekit device``."""
