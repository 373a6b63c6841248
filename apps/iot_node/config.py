"""The node's settings: a TOML file (``--config``), then command-line flags over it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["Config", "ConfigError", "parse_args"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and how to fix it."""


def _default_device() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name if _NAME.match(name) else "edgekit-node"


@dataclass(frozen=True)
class Config:
    """Every setting, with its default. TOML keys and flags use the same names."""

    device: str = dataclasses.field(default_factory=_default_device)
    package: str = "/opt/edgekit/current"  # a package, a deploy, or a `current` link to one
    policy: str = "bandit"
    backend: str = "auto"
    # systemd's StateDirectory= sets $STATE_DIRECTORY; the outbox and bandit state live there
    state_dir: str = dataclasses.field(
        default_factory=lambda: (
            os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "iot-node-state"
        )
    )
    inbox: str = ""  # default: STATE_DIR/inbox
    broker: str = "localhost"
    port: int = 0  # 0: 1883, or 8883 with TLS
    username: str = ""
    password: str = ""
    password_file: str = ""
    tls: bool = False
    tls_ca: str = ""  # default: the system's CAs
    tls_cert: str = ""
    tls_key: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 86_400  # the broker keeps our session (and queued commands) a day
    topic_prefix: str = "edgekit"
    outbox_cap: int = 100_000
    max_inflight: int = 256  # events handed to paho at once (the rest wait on disk)
    batch: int = 256  # inputs per outbox commit at most (fewer when fewer are waiting)
    batch_s: float = 0.1  # and at most this long classifying before the commit
    max_request_bytes: int = 4 << 20
    max_pixels: int = 4096 * 4096
    poll_s: float = 0.05
    settle_s: float = 0.5  # an inbox file younger than this may still be being written
    watch_s: float = 1.0  # how often the package link is checked for a new deployment
    stats_s: float = 30.0
    drain_s: float = 5.0  # on SIGTERM, how long to wait for PUBACKs
    ha_discovery: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.device):
            raise ConfigError(
                f"device {self.device!r} is not a plain name: use letters, digits, '_', '-', "
                "'.' (at most 64), since it goes into MQTT topics"
            )
        if not re.match(r"^[A-Za-z0-9_/-]+$", self.topic_prefix) or self.topic_prefix.endswith("/"):
            raise ConfigError(f"topic_prefix {self.topic_prefix!r}: letters, digits, _ - / only")
        for name in ("outbox_cap", "max_inflight", "batch", "max_request_bytes", "keepalive_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 < self.batch_s <= 60:
            raise ConfigError(f"batch_s must be above 0 and at most 60 seconds, not {self.batch_s}")
        if self.outbox_cap < 2 * self.max_inflight:
            raise ConfigError(
                f"outbox_cap ({self.outbox_cap}) must be at least twice max_inflight "
                f"({self.max_inflight}): in-flight events are never dropped"
            )
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port} is not a TCP port")
        if (self.tls_cert == "") != (self.tls_key == ""):
            raise ConfigError("tls_cert and tls_key go together (a client certificate and key)")

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    @property
    def inbox_dir(self) -> Path:
        return Path(self.inbox or Path(self.state_dir) / "inbox")

    def topic(self, leaf: str) -> str:
        return f"{self.topic_prefix}/{self.device}/{leaf}"

    def secret(self) -> str:
        """The broker password: ``password_file``, else ``password``, else
        ``$EDGEKIT_MQTT_PASSWORD``."""
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return self.password or os.environ.get("EDGEKIT_MQTT_PASSWORD", "")


def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError as exc:  # Python < 3.11
        raise ConfigError("reading a TOML config needs Python 3.11 or newer") from exc
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # [node] and [mqtt] tables are allowed for readability; keys are the same either way.
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _coerce(name: str, kind: Any, value: Any) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    if kind is bool and isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} should be {kind.__name__}, not {value!r}")
    return value


def parse_args(argv: list[str] | None = None) -> Config:
    """``--config FILE`` plus one flag per setting (``--outbox-cap 500``)."""
    p = argparse.ArgumentParser(
        prog="iot_node", description="Classify inbox files and MQTT requests; report over MQTT."
    )
    p.add_argument("--config", help="TOML file with any of the settings below")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=kind, default=None)
    args = p.parse_args(argv)
    values = _load_toml(args.config) if args.config else {}
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown settings in {args.config}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    for name in known:
        flag = getattr(args, name)
        if flag is not None:
            values[name] = flag
    values = {k: _coerce(k, known[k].type, v) for k, v in values.items()}
    return Config(**values)
