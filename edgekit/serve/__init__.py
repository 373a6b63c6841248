"""Serve a package's tail stages over the Open Inference Protocol (KServe v2).

The device runs stages ``0..s-1`` and sends the 8-bit tensor stage ``s`` takes; the
server runs stages ``s..N-1`` and answers the last exit's logits and confidence. The wire
contract lives in :mod:`edgekit._kserve` (shared with the device client).

    from edgekit.serve import Server, ServeConfig
    with Server("fmnist.edgepkg", ServeConfig(port=0, token="s3cret")) as srv:
        print(srv.url)   # http://127.0.0.1:PORT, routes under /v2

Needs ``pip install 'edgekit[serve]'`` (Ray Serve: ``edgekit[ray]``). Heavy modules are
imported on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import ServeConfig, ServeError
    from ._handler import Handler, Reply, load_handler
    from ._ray import RayServer, serve_ray
    from ._server import Server, serve
    from ._triton import TritonExport, export_triton

__all__ = [
    "Handler",
    "RayServer",
    "Reply",
    "ServeConfig",
    "ServeError",
    "Server",
    "TritonExport",
    "export_triton",
    "load_handler",
    "serve",
    "serve_ray",
]

_WHERE = {
    "ServeConfig": "_config",
    "ServeError": "_config",
    "Handler": "_handler",
    "Reply": "_handler",
    "load_handler": "_handler",
    "Server": "_server",
    "serve": "_server",
    "serve_ray": "_ray",
    "RayServer": "_ray",
    "TritonExport": "_triton",
    "export_triton": "_triton",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'edgekit.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}", __name__), name)
