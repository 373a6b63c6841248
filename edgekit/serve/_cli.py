"""``edgekit serve`` and ``edgekit export``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this component's commands to the ``edgekit`` parser."""
