"""The node: one loop that classifies inputs and commits their events; a second process
delivers them.

Everything that touches the model runs in this one thread; paho's network thread (the
node's own connection: requests and commands in, answers, status and stats out) only fills
a deque (see link.py). Per batch: take inputs (one directory listing), classify, commit their
events (one transaction: the durability point; it also records each inbox file with its
event), then acknowledge the requests. The events go to the broker from the publisher process
(publisher.py), which the node starts and supervises: it reads committed rows, publishes them
and deletes each after its PUBACK, and moves the committed files to ``done/``, on another core
than the inference when the board has one. The order that makes the guarantees: an event is
committed before its file leaves the inbox, and a committed file is never read again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from json.encoder import encode_basestring as _quote
from pathlib import Path
from typing import Any

import edgekit

from .config import Config
from .inbox import Inbox, InputProblem, identity
from .inputs import decode
from .link import Link
from .outbox import Outbox
from .publisher import PublisherProcess
from .systemd import Notifier

__all__ = ["Deployment", "Node", "resolve"]

log = logging.getLogger("iot_node")


@dataclass(frozen=True)
class Deployment:
    """Which package a path points at now: its folder, and an id that changes with it."""

    package: Path
    deploy_id: str
    fingerprint: tuple[str, int]


def resolve(path: str | Path) -> Deployment:
    """``path`` is a package, a deploy folder (``package/`` inside, as ``edgekit push``
    makes) or a ``current`` link to either; follow it to the package it means now."""
    real = Path(os.path.realpath(path))
    pkg = real
    if not (pkg / "manifest.json").is_file() and (real / "package" / "manifest.json").is_file():
        pkg = Path(os.path.realpath(real / "package"))
    manifest = pkg / "manifest.json"
    try:
        st = manifest.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no edge package at {path} (no manifest.json there or in {path}/package): "
            "push one with `edgekit push PKG DEVICE`, or point --package at NAME.edgepkg"
        ) from None
    if real is not pkg:  # a deploy: its folder name (RELEASE-ENV) is the deploy id
        deploy_id = real.name
    else:
        deploy_id = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]
    return Deployment(pkg, deploy_id, (str(pkg), st.st_mtime_ns))


@dataclass
class _Item:
    """One input in a batch: what it was, and the event it produced."""

    event_id: str
    source: str
    file: str | None = None  # the inbox file's name
    request: Any = None  # the MQTT message of a request
    seen_id: str | None = None
    event: bytes = b""  # the event, JSON
    ok: bool = False
    ident: str = ""  # the inbox file's identity (inputs.identity)


class Node:
    """``Node(cfg).run()`` until SIGTERM/SIGINT (or ``stop()``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.outbox_path = state / "outbox.sqlite3"
        self.outbox = Outbox(self.outbox_path, cfg.outbox_cap)
        self.inbox = Inbox(cfg.inbox_dir, settle_s=cfg.settle_s)
        self._seq = itertools.count(1)
        self._id_lock = threading.Lock()  # ids are taken by this thread and the inbox's
        self._ids = iter(self._new_id, "")
        self.policy = cfg.policy
        self.deployment = resolve(cfg.package)
        self.model = self._load(self.deployment)
        self.link = Link(cfg)
        self.publisher = PublisherProcess(cfg)  # started by run()
        self.notify = Notifier()
        self._stop = threading.Event()
        self._carry: list[_Item] = []  # taken, not classified before the batch's deadline
        # Files committed before the last stop and not moved yet: not read again (the
        # publisher moves them when it starts).
        self.inbox.pending.update((n, v[0]) for n, v in self.outbox.committed_files().items())
        self.counts = {"processed": 0, "failed": 0, "requests": 0, "commands": 0, "rejected": 0}
        self.started = time.time()
        self._next_stats = time.monotonic() + cfg.stats_s
        self._next_watch = time.monotonic() + cfg.watch_s
        self.deploy_error: str | None = None
        self._codec_key: tuple[int, str] | None = None
        self._codec_cache: tuple[str, tuple[int, ...], list[str]] = ("", (), [])

    # -- the model ---------------------------------------------------------------------------

    def _load(self, dep: Deployment, policy: str | None = None) -> Any:
        pol = policy or self.policy
        state = None
        if pol.startswith("bandit"):
            name = dep.package.name.removesuffix(".edgepkg")
            state = str(Path(self.cfg.state_dir) / f"bandit-{name}.json")
        model = edgekit.load(dep.package, backend=self.cfg.backend, policy=pol, state=state)
        log.info("model %s (deploy %s), policy %s", model.manifest.name, dep.deploy_id, pol)
        return model

    def _switch(self, dep: Deployment, policy: str | None = None) -> None:
        """Load the new model first; only then retire the old one (between inputs)."""
        new = self._load(dep, policy)
        old, self.model, self.deployment = self.model, new, dep
        if policy:
            self.policy = policy
        old.close()

    def _watch(self) -> None:
        """Follow ``edgekit push``: a new ``current`` deployment is loaded without a restart."""
        try:
            dep = resolve(self.cfg.package)
            if dep.fingerprint != self.deployment.fingerprint:
                log.info("deployment changed: %s -> %s", self.deployment.deploy_id, dep.deploy_id)
                self._switch(dep)
            self.deploy_error = None
        except Exception as exc:  # a half-pushed or broken package: keep the running one
            if str(exc) != self.deploy_error:
                log.error("new deployment not loaded, staying on %s: %s", self.deployment, exc)
            self.deploy_error = str(exc)

    # -- inputs --------------------------------------------------------------------------

    def _new_id(self) -> str:
        with self._id_lock:
            n = next(self._seq)
        return f"{self.cfg.device}-{self.outbox.boot}-{n}"

    def _codec(self) -> tuple[str, tuple[int, ...], list[str]]:
        """What every event of this model shares, JSON-encoded once: the events are written
        with a format string (a json.dumps of a 14-key dict was a tenth of a small model's
        inference)."""
        key = (id(self.model), self.deployment.deploy_id)
        if self._codec_key != key:
            m = self.model
            head = (
                f'"device":{_quote(self.cfg.device)},"package":{_quote(m.manifest.name)},'
                f'"deploy":{_quote(self.deployment.deploy_id)},'
            )
            names = [_quote(n) for n in m.manifest.labels] if m.manifest.labels else []
            self._codec_cache = (head, tuple(m.manifest.input.shape), names)
            self._codec_key = key
        return self._codec_cache

    def _classify(self, item: _Item, data: bytes) -> None:
        head, shape, names = self._codec()
        try:
            x = decode(data, shape, self.cfg.max_pixels)
            p = self.model.predict(x)
        except (InputProblem, edgekit.EdgekitError, ValueError) as exc:
            self._failed(item, str(exc))
            return
        label = p.label
        name = names[label] if 0 <= label < len(names) else _quote(p.name) if p.name else "null"
        item.event = (
            f'{{"event_id":{_quote(item.event_id)},{head}"source":{_quote(item.source)},'
            f'"ok":true,"label":{label},"name":{name},"score":{round(p.score, 5)!r},'
            f'"exit":{p.exit},"stages_run":{p.stages_run},'
            f'"latency_ms":{round(p.latency_ms, 4)!r},'
            f'"offloaded":{"true" if p.offloaded else "false"},"ts":{round(time.time(), 3)!r}}}'
        ).encode()
        item.ok = True
        self.counts["processed"] += 1

    def _failed(self, item: _Item, error: str) -> None:
        ev: dict[str, Any] = {
            "event_id": item.event_id,
            "device": self.cfg.device,
            "source": item.source,
            "package": self.model.manifest.name,
            "deploy": self.deployment.deploy_id,
            "ok": False,
            "error": error,
            "ts": round(time.time(), 3),
        }
        item.event = json.dumps(ev).encode()
        self.counts["failed"] += 1

    def _gather(self) -> list[_Item]:
        items, self._carry = self._carry, []
        while self.link.inbox and len(items) < self.cfg.batch:
            msg = self.link.inbox.popleft()
            if msg.topic == self.cfg.topic("cmd"):
                self._command(msg)
                continue
            items.append(self._request_item(msg))
        room = self.cfg.batch - len(items)
        for name in self.inbox.take(room) if room > 0 else ():
            items.append(_Item(next(self._ids), f"inbox:{name}", file=name))
        return [i for i in items if i.event_id]

    def _request_item(self, msg: Any) -> _Item:
        props = msg.properties
        rid = None
        for k, v in getattr(props, "UserProperty", None) or []:
            if k == "request_id":
                rid = v[:128]
        corr = getattr(props, "CorrelationData", None)
        if rid is None and corr:
            rid = bytes(corr[:64]).hex()
        seen = f"req:{rid}" if rid else None
        if seen and self.outbox.seen(seen):
            self.link.ack(msg)  # a redelivery of a request already answered
            return _Item("", "")
        self.counts["requests"] += 1
        return _Item(next(self._ids), f"mqtt:{rid or '-'}", request=msg, seen_id=seen)

    def _process(self, items: list[_Item]) -> None:
        # Group commit: one transaction (one fsync) per batch, but a batch is cut short after
        # batch_s, so a slow model does not hold events back; the rest go first next batch.
        deadline = time.monotonic() + self.cfg.batch_s
        limit = self.cfg.max_request_bytes
        kept = []
        for k, it in enumerate(items):
            if k and time.monotonic() > deadline:
                self._carry = items[k:]
                break
            try:
                if it.file is not None:
                    got = self.inbox.read(it.file, limit)
                    if got is None:  # taken away before it was read: no input, no event
                        self.inbox.release(it.file)
                        continue
                    data, it.ident = got
                else:
                    data = bytes(it.request.payload)
            except (OSError, InputProblem) as exc:
                if it.file is not None and not it.ident:
                    it.ident = self._ident(it.file)
                self._failed(it, str(exc))
            else:
                self._classify(it, data)
            kept.append(it)
        items = kept
        topic = self.cfg.topic("events")
        files = [(i.file, i.ident, int(i.ok), i.event_id) for i in items if i.file is not None]
        added = self.outbox.add(
            [(i.event_id, topic, i.event) for i in items],
            seen=[i.seen_id for i in items if i.seen_id],
            files=files,
        )
        # Committed: the inputs can be let go of (the files by the publisher).
        self.inbox.committed([(f[0], f[1]) for f in files])
        self.publisher.committed(added, [(f[0], bool(f[2]), f[3]) for f in files])
        for it in items:
            if it.file is None:
                self.link.reply(it.request, json.loads(it.event) if it.event else {})
                self.link.ack(it.request)

    def _ident(self, name: str) -> str:
        try:
            return identity(os.stat(self.inbox.root / name, follow_symlinks=False))
        except OSError:
            return ""

    # -- commands and stats --------------------------------------------------------------

    def _command(self, msg: Any) -> None:
        """``{"id": ..., "cmd": "policy"|"stats"|"reload", "policy": ...}``, once per id."""
        try:
            if len(msg.payload) > 65_536:
                raise ValueError("command over 64 KiB")
            body = json.loads(msg.payload)
            cid, cmd = body.get("id"), body.get("cmd")
            if not isinstance(cid, str) or not 0 < len(cid) <= 128:
                raise ValueError('a command needs an "id": a string of 1 to 128 characters')
        except (ValueError, AttributeError) as exc:
            self._cmd_result(msg, {"ok": False, "error": f"bad command: {exc}"})
            return
        result: dict[str, Any] = {"id": cid, "cmd": cmd}
        if self.outbox.seen(f"cmd:{cid}"):
            result.update(ok=True, duplicate=True)
        else:
            self.counts["commands"] += 1
            try:
                result.update(ok=True, **self._apply(cmd, body))
            except Exception as exc:  # a bad policy string, a broken package: say so, go on
                result.update(ok=False, error=str(exc))
            self.outbox.add([], seen=[f"cmd:{cid}"])
        self._cmd_result(msg, result)

    def _apply(self, cmd: Any, body: dict[str, Any]) -> dict[str, Any]:
        if cmd == "stats":
            self._publish_stats()
            return {}
        if cmd == "reload":
            self._switch(resolve(self.cfg.package))
            return {"deploy": self.deployment.deploy_id}
        if cmd == "policy":
            pol = body.get("policy")
            if not isinstance(pol, str) or not pol:
                raise ValueError('"policy" needs a policy string, e.g. "threshold:0.9"')
            self._switch(self.deployment, policy=pol)
            return {"policy": pol}
        raise ValueError(f"unknown cmd {cmd!r}: use policy, stats or reload")

    def _cmd_result(self, msg: Any, result: dict[str, Any]) -> None:
        self.link.publish(self.cfg.topic("cmd/result"), json.dumps(result).encode())
        self.link.reply(msg, result)
        self.link.ack(msg)

    def stats(self) -> dict[str, Any]:
        """What the node reports on ``.../stats``."""
        return {
            "device": self.cfg.device,
            "ts": round(time.time(), 3),
            "uptime_s": round(time.time() - self.started, 1),
            "boot": self.outbox.boot,
            "package": self.model.manifest.name,
            "deploy": self.deployment.deploy_id,
            "deploy_error": self.deploy_error,
            **self.counts,
            "outbox_depth": self.outbox.count(),  # PUBACKed rows leave it (the publisher)
            "dropped": self.outbox.dropped_total(),
            "connected": self.link.connected.is_set(),
            "requests_dropped": self.link.overflow,
            "publisher": self.publisher.stats(),  # its connection, in_flight, restarts
            "model": self.model.stats(),
        }

    def _publish_stats(self) -> None:
        self.link.publish(self.cfg.topic("stats"), json.dumps(self.stats()).encode(), retain=True)

    def _discovery(self) -> None:
        """Home Assistant MQTT discovery: a sensor for the label, one for the latency."""
        dev = {"identifiers": [f"edgekit-{self.cfg.device}"], "name": self.cfg.device}
        for key, tmpl, unit in (
            ("label", "{{ value_json.name or value_json.label }}", None),
            ("latency", "{{ value_json.latency_ms }}", "ms"),
        ):
            conf: dict[str, Any] = {
                "name": f"{self.cfg.device} {key}",
                "unique_id": f"edgekit_{self.cfg.device}_{key}",
                "state_topic": self.cfg.topic("events"),
                "value_template": tmpl,
                "availability_topic": self.cfg.topic("status"),
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": dev,
            }
            if unit:
                conf["unit_of_measurement"] = unit
            topic = f"homeassistant/sensor/edgekit_{self.cfg.device}_{key}/config"
            self.link.publish(topic, json.dumps(conf).encode(), retain=True)

    # -- the loop ------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self._stop.set()
        self.link.wake.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.cfg.ha_discovery:
            self.link.on_connected.append(self._discovery)
        self.publisher.start()
        self.link.start()
        log.info("inbox %s; outbox holds %d events", self.inbox.root, self.outbox.depth)
        self.notify.send("READY=1\nSTATUS=classifying")
        while not self._stop.is_set():
            items = self._gather()
            if items:
                self._process(items)
            self._housekeeping()
            if not items:
                # Idle: sleep until paho brings a message, or the inbox poll is due.
                self.link.wake.wait(self.cfg.poll_s)
                self.link.wake.clear()
        self._shutdown()

    def _housekeeping(self) -> None:
        self.notify.ping()
        self.publisher.check()
        now = time.monotonic()
        if now >= self._next_watch:
            self._next_watch = now + self.cfg.watch_s
            self._watch()
        if now >= self._next_stats:
            self._next_stats = now + self.cfg.stats_s
            self._publish_stats()
            self.outbox.trim_seen()

    def _shutdown(self) -> None:
        """Finish: the input in hand is done; wait a little for PUBACKs; say offline."""
        self.notify.send("STOPPING=1")
        while self._carry:  # the batch in hand is finished, deadline or not
            items, self._carry = self._carry, []
            self._process(items)
        # Every event is committed: the publisher waits up to drain_s for PUBACKs, then ends.
        self.publisher.stop(self.cfg.drain_s)
        log.info("stopping: %d events wait for the broker", self.outbox.count())
        if self.link.connected.is_set():
            self._publish_stats()
        self.link.close()
        self.model.close()
        self.outbox.close()
        self.notify.close()
        log.info("stopped")
