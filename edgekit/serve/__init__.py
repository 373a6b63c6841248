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

from typing import TYPE_CHECKING, Any

from edgekit._errors import ProtocolError, ServeError
from edgekit._public import load_lazy, publish

if TYPE_CHECKING:
    from ._config import ServeConfig
    from ._handler import Handler, Reply, load_handler
    from ._ray import RayServer, serve_ray
    from ._server import Server, serve
    from ._triton import TritonExport, export_triton

__all__ = [
    "Handler",
    "ProtocolError",
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

# Public name -> (private module, attribute), imported on first use.
_LAZY: dict[str, tuple[str, str | None]] = {
    "ServeConfig": ("._config", "ServeConfig"),
    "Handler": ("._handler", "Handler"),
    "Reply": ("._handler", "Reply"),
    "load_handler": ("._handler", "load_handler"),
    "Server": ("._server", "Server"),
    "serve": ("._server", "serve"),
    "serve_ray": ("._ray", "serve_ray"),
    "RayServer": ("._ray", "RayServer"),
    "TritonExport": ("._triton", "TritonExport"),
    "export_triton": ("._triton", "export_triton"),
}

publish(globals())


def __getattr__(name: str) -> Any:
    return load_lazy(__name__, _LAZY, name)
