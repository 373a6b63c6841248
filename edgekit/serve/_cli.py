"""``edgekit serve`` and ``edgekit export``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgekit._progress import say

TOKEN_ENV = "EDGEKIT_TOKEN"
_OLD_TOKEN_ENV = "EDGEKIT_SERVE_TOKEN"  # still read
_MAX_TOKEN = 4096


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this component's commands to the ``edgekit`` parser."""
    s = sub.add_parser(
        "serve",
        help="serve a package's tail stages over KServe v2 (split computing)",
        description="Serve the tail stages of PKG over the Open Inference Protocol "
        "(KServe v2 REST, with binary tensor data): one model per split point, "
        "PKG-split0 .. PKG-split{N-1}, dynamically batched.",
    )
    s.add_argument("package", help="the NAME.edgepkg folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    tok = s.add_mutually_exclusive_group()
    tok.add_argument(
        "--token-file",
        help=f"read the bearer token clients must send from this file (or ${TOKEN_ENV})",
    )
    tok.add_argument("--token", help="the token itself (visible in ps: prefer --token-file)")
    s.add_argument("--tls-cert", help="PEM certificate (HTTPS)")
    s.add_argument("--tls-key", help="PEM private key (HTTPS)")
    s.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or litert")
    s.add_argument("--max-batch", type=int, default=32, help="rows per batch (1: no batching)")
    s.add_argument(
        "--max-delay-ms", type=float, default=2.0, help="how long a request waits for a batch"
    )
    s.add_argument(
        "--max-body-mb", type=float, default=8.0, help="request body limit, also decompressed (413)"
    )
    s.add_argument("--max-rows", type=int, default=1024, help="rows per request (413 beyond)")
    s.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds for a request's headers"
    )
    s.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds for a request's body (408)"
    )
    s.add_argument(
        "--max-connections", type=int, default=1024, help="open connections (more are closed)"
    )
    s.add_argument("--threads", type=int, default=1, help="interpreter threads per stage")
    s.add_argument("--workers", type=int, help="batches running at once (default: per model)")
    s.add_argument("--engine", choices=["builtin", "ray"], default="builtin")
    s.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (--engine ray)")
    s.add_argument(
        "--address",
        "--ray-address",
        dest="ray_address",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)",
    )
    s.set_defaults(func=_cmd_serve)

    e = sub.add_parser("export", help="export a package for another serving system")
    esub = e.add_subparsers(dest="target", required=True)
    t = esub.add_parser(
        "triton",
        help="a Triton model repository with the tail models",
        description="Write a Triton Inference Server model repository: one ONNX model per "
        "split point (stages s..N-1 chained, outputs logits and confidence) with its "
        "config.pbtxt (onnxruntime_onnx, dynamic batching).",
    )
    t.add_argument("package")
    t.add_argument("--out", required=True, help="the model repository folder")
    t.add_argument("--max-batch", type=int, default=32)
    t.add_argument("--max-delay-ms", type=float, default=2.0)
    t.add_argument("--force", action="store_true", help="replace the models if they exist")
    t.set_defaults(func=_cmd_export_triton)


def _token(args: argparse.Namespace) -> str | None:
    from ._config import ServeError

    if args.token_file:
        path = Path(args.token_file)
        try:
            with path.open("rb") as f:
                raw = f.read(_MAX_TOKEN + 1)
            mode = path.stat().st_mode
            text = raw.decode().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeError(f"cannot read --token-file {args.token_file}: {exc}") from exc
        if len(raw) > _MAX_TOKEN:
            raise ServeError(
                f"--token-file {args.token_file} is longer than {_MAX_TOKEN} bytes",
                hint="the file holds only the token",
            )
        if not text:
            raise ServeError(f"--token-file {args.token_file} is empty")
        if mode & 0o077:
            say(f"warning: --token-file {args.token_file} is readable by others (chmod 600 it)")
        return text
    if args.token:
        say(f"warning: --token is visible to every user in ps; use --token-file or ${TOKEN_ENV}")
        return str(args.token)
    return os.environ.get(TOKEN_ENV) or os.environ.get(_OLD_TOKEN_ENV) or None


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._config import ServeConfig

    config = ServeConfig(
        host=args.host,
        port=args.port,
        token=_token(args),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        backend=args.backend,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_body_mb=args.max_body_mb,
        max_rows=args.max_rows,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
        threads=args.threads,
        workers=args.workers,
        engine=args.engine,
        replicas=args.replicas,
        ray_address=args.ray_address,
    )
    if config.engine == "ray":
        from ._ray import serve_ray

        serve_ray(args.package, config)
    else:
        from ._server import serve

        serve(args.package, config)
    return 0


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from ._triton import export_triton

    res = export_triton(
        args.package,
        args.out,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        force=args.force,
    )
    print(f"wrote {len(res.models)} models to {res.root} (tritonserver --model-repository ...)")
    return 0
