"""``--engine ray``: the same ASGI app as Ray Serve replicas behind the same routes.

The package travels to the replicas through Ray's object store (manifest and the stage
files of the chosen backend, checked against their sha256 on arrival), so a multi-node
cluster needs no shared file system: only ``pip install 'edgekit[ray]'`` on every node.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from edgekit._errors import require
from edgekit._package import MANIFEST, read_manifest
from edgekit._progress import say
from edgekit.runtime import backends

from ._config import ServeConfig, ServeError

__all__ = ["RayServer", "package_files", "serve_ray"]

_log = logging.getLogger("edgekit.serve")
_HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"


def package_files(root: Path, backend: str) -> dict[str, bytes]:
    """The files a replica needs: the manifest and every stage file in the backend's format."""
    manifest = read_manifest(root, verify=True)
    fmt = backends.get(backend).FORMAT
    rels = [s.files[fmt] for s in manifest.stages if fmt in s.files]
    if len(rels) != len(manifest.stages):
        raise ServeError(
            f"the package has no {fmt} stages for backend {backend!r}",
            hint="pick --backend to match the package's formats",
        )
    out = {MANIFEST: (root / MANIFEST).read_bytes()}
    for rel in rels:
        out[rel] = (root / rel).read_bytes()
    return out


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayServer:
    """The package's tails as a Ray Serve application (``with RayServer(pkg, cfg) as s``).

    Joins the cluster at ``config.ray_address`` (or ``$RAY_ADDRESS``), or starts a local
    one (``ray_init`` keyword arguments go to ``ray.init``, e.g. ``num_cpus=2``). Serve's
    HTTP proxy listens on ``config.host:config.port`` (0: a free port, see :attr:`url`).
    """

    def __init__(
        self,
        package: str | os.PathLike[str],
        config: ServeConfig,
        *,
        ray_init: dict[str, Any] | None = None,
        replica_cpus: float = 1.0,
    ) -> None:
        self.root = Path(package)
        self.config = config
        self.ray_init = dict(ray_init or {})
        self.replica_cpus = replica_cpus
        self.url = ""
        self.app_name = ""
        self.proxy = "the cluster's"
        self._started_ray = False

    def start(self) -> RayServer:
        ray = require("ray", "ray", purpose="edgekit serve --engine ray")
        serve = require("ray.serve", "ray", purpose="edgekit serve --engine ray")
        cfg = self.config
        files = package_files(self.root, cfg.backend)
        manifest = read_manifest(self.root, verify=False)
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, **self.ray_init}
            local = address is None
            # A local cluster gets Serve's HAProxy ingress (replicas answer HTTP
            # themselves: about 10x the Python proxy's throughput here), except with TLS,
            # which only the Python proxy terminates. A running cluster keeps its own.
            ha = local and not cfg.tls and os.environ.get(_HA_PROXY, "1") == "1"
            saved = os.environ.get(_HA_PROXY)
            if local:
                os.environ[_HA_PROXY] = "1" if ha else "0"
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ServeError(
                    f"cannot reach the Ray cluster at {address}: {exc}",
                    hint="start it with `ray start --head` or check RAY_ADDRESS",
                ) from exc
            finally:
                if saved is None:
                    os.environ.pop(_HA_PROXY, None)
                else:
                    os.environ[_HA_PROXY] = saved
            self._started_ray = local
            self.proxy = "haproxy" if ha else "python" if local else "the cluster's"
        port = cfg.port or _free_port(cfg.host)
        http: dict[str, Any] = {"host": cfg.host, "port": port}
        if cfg.tls:
            http.update(ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key)
        serve.start(http_options=http, logging_config={"log_level": "WARNING"})
        self.app_name = f"edgekit-{manifest.name}"
        self._files = files
        self._deploy(cfg.replicas)
        scheme = "https" if cfg.tls else "http"
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"{scheme}://{host}:{port}"
        self.manifest = manifest
        return self

    def _deploy(self, replicas: int) -> None:
        from ray import serve

        from ._ray_deployment import EdgekitTail

        deployment: Any = EdgekitTail  # a Ray Serve Deployment once decorated
        dep = deployment.options(
            num_replicas=replicas,
            # enough requests in flight per replica for its batcher to fill batches
            max_ongoing_requests=max(64, 4 * self.config.max_batch),
            ray_actor_options={"num_cpus": self.replica_cpus},
        )
        serve.run(
            dep.bind(self._files, self.config),
            name=self.app_name,
            route_prefix="/",
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )

    def scale(self, replicas: int) -> None:
        """Redeploy with ``replicas`` copies (Serve replaces the running ones)."""
        if replicas < 1:
            raise ServeError(f"replicas must be at least 1, got {replicas}")
        self.config = self.config.with_(replicas=replicas)
        self._deploy(replicas)

    def stop(self) -> None:
        """Shut the local cluster down if this process started it (at once: Serve's own
        shutdown drains for 30 s); on a cluster that was already running, delete only
        this application (Serve drains it)."""
        ray = require("ray", "ray")
        from ray import serve

        if not ray.is_initialized():
            return
        if self._started_ray:
            ray.shutdown()  # stops every process of the local cluster, HAProxy included
        elif self.app_name:
            try:
                serve.delete(self.app_name)
            except Exception as exc:  # the cluster may already be gone
                _log.warning("edgekit: could not delete %s: %s", self.app_name, exc)

    def __enter__(self) -> RayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_ray(package: str | os.PathLike[str], config: ServeConfig) -> None:
    """Serve on Ray Serve until SIGINT or SIGTERM."""
    import signal

    from ._server import security_warnings

    for w in security_warnings(config):
        say(f"warning: {w}")
    srv = RayServer(package, config)
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        srv.start()
        # after ray.init, which installs a SIGTERM handler that aborts the process
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        address = os.environ.get("RAY_ADDRESS") or config.ray_address or "a local Ray cluster"
        n = len(srv.manifest.stages)
        name = srv.manifest.name
        say(
            f"serving {name} on {srv.url}/v2 (Ray Serve, {config.replicas} replica(s) on "
            f"{address}, {srv.proxy} proxy): {n} models {name}-split0 .. "
            f"{name}-split{n - 1}, {config.backend}, "
            f"max batch {config.max_batch}, max delay {config.max_delay_ms:g} ms; auth: "
            f"{'bearer token' if config.token else 'OFF (no --token-file)'}; TLS: "
            f"{'on' if config.tls else 'off'}"
        )
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        srv.stop()
    say(f"stopped serving {package}")
