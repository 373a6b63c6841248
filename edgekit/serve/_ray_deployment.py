"""The Ray Serve deployment: a replica unpacks the package, loads the tails and serves the
same ASGI app as the built-in engine (imported only with ``--engine ray``)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import serve

from edgekit._errors import ChecksumError
from edgekit._package import MANIFEST, read_manifest

from ._asgi import App
from ._config import ServeConfig
from ._handler import Handler
from ._tail import open_tails

__all__ = ["EdgekitTail"]


def _unpack(files: dict[str, bytes]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="edgekit-serve-")) / "package.edgepkg"
    for rel, data in files.items():
        p = (root / rel).resolve()
        if root.resolve() not in p.parents and p != root.resolve():
            raise ChecksumError(f"refusing a package path outside the package: {rel}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    manifest = read_manifest(root, verify=False)
    for rel in files:
        if rel == MANIFEST:
            continue
        want = manifest.files.get(rel)
        if want != hashlib.sha256(files[rel]).hexdigest():
            raise ChecksumError(f"{rel} arrived corrupt (sha256 differs from the manifest)")
    return root


@serve.deployment(name="edgekit_tail")
@serve.ingress()
class EdgekitTail:
    """One replica: every split point of the package, dynamically batched."""

    def __init__(self, files: dict[str, bytes], config: ServeConfig) -> None:
        self._root = _unpack(files)
        manifest = read_manifest(self._root, verify=False)
        tails = open_tails(
            self._root,
            manifest,
            config.backend,
            threads=config.threads,
            max_batch=config.max_batch,
        )
        # threads, not forked decoders: a Ray worker runs gRPC, which does not survive fork
        self.handler = Handler(
            self._root, manifest, tails, config, config.backend, decode_processes=False
        )

    def __serve_build_asgi_app__(self) -> Any:
        return App(self.handler)

    def __del__(self) -> None:
        shutil.rmtree(self._root.parent, ignore_errors=True)
