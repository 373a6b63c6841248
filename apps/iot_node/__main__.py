"""``python -m iot_node [--config node.toml] [--flags]``: run the node until SIGTERM."""

from __future__ import annotations

import logging
import sys

from .config import ConfigError, parse_args
from .node import Node


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = parse_args(argv)
        node = Node(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"iot_node: {exc}", file=sys.stderr)
        return 2
    node.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
