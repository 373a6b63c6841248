"""``edgekit device``, ``push``, ``run``, ``rollback`` and remote ``bench``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this component's commands to the ``edgekit`` parser."""
