"""``push``: install the runtime and a package on devices, switching versions atomically.

Per target: probe; build (once per platform) a wheelhouse on the host; send the wheels the
device lacks and make its environment (offline, ``pip install --no-index``); send the
package files the device lacks into ``RID.partial``, copying the ones it already has;
verify every checksum on the device; smoke-test with the new environment; then switch
``current``. Until that last rename, the previous version stays current, whatever fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from edgekit._errors import EdgekitError
from edgekit._package import MANIFEST, Manifest, file_sha256, read_manifest
from edgekit._progress import Progress, say

from ._connection import Connection
from ._errors import (
    ConnectionLostError,
    DiskFullError,
    PushError,
    UnsupportedDeviceError,
)
from ._options import ConnectOptions, RollbackOptions, connect
from ._probe import PROBE_SCRIPT, DeviceInfo, Profile, parse_probe
from ._remote import DEFAULT_ROOT, Layout, q
from ._wheelhouse import Wheelhouse, build_wheelhouse

__all__ = [
    "GroupResult",
    "PushOptions",
    "PushResult",
    "probe_connection",
    "push",
    "push_one",
]


@dataclass(frozen=True)
class PushOptions:
    """How to push (and bench): backend and threads (default: from the device's profile),
    where on the device, how long the smoke test and the install may take, and how to
    connect.

    Connection settings go in ``connect`` (a :class:`ConnectOptions`); the flat
    ``ssh_config``, ``accept_new_host_key``, ``known_hosts`` and ``password`` fields are
    kept for existing callers and used only when ``connect`` is not given.
    """

    backend: str | None = None
    threads: int | None = None
    root: str = DEFAULT_ROOT
    ssh_config: str | None = None
    accept_new_host_key: bool = False
    known_hosts: str | None = None
    verbose: bool = True
    smoke_timeout: float = 600.0
    install_timeout: float = 1800.0
    password: str | None = field(default=None, repr=False)  # for the login only; never saved
    connect: ConnectOptions | None = None

    @property
    def connection(self) -> ConnectOptions:
        """The connection settings: ``connect``, or the flat SSH fields."""
        if self.connect is not None:
            return self.connect
        return ConnectOptions(
            ssh_config=self.ssh_config,
            known_hosts=self.known_hosts,
            accept_new_host_key=self.accept_new_host_key,
            password=self.password,
        )

    def device_options(self) -> RollbackOptions:
        """These settings as the options of the other device operations."""
        return RollbackOptions(
            connect=self.connection,
            root=self.root,
            verbose=self.verbose,
            smoke_timeout=self.smoke_timeout,
        )


R = TypeVar("R", bound="_HasOk")


class _HasOk(Protocol):
    @property
    def ok(self) -> bool: ...


class GroupResult(dict[str, R]):
    """``{target: result}`` of a fleet operation, in the order the targets were given, with
    the ones that worked and the ones that failed apart (fabric's ``GroupResult``)."""

    @property
    def succeeded(self) -> dict[str, R]:
        """The targets whose result is ``ok``."""
        return {t: r for t, r in self.items() if r.ok}

    @property
    def failed(self) -> dict[str, R]:
        """The targets whose result is not ``ok`` (each result says why)."""
        return {t: r for t, r in self.items() if not r.ok}

    @property
    def ok(self) -> bool:
        """Whether every target succeeded."""
        return all(r.ok for r in self.values())


@dataclass(frozen=True)
class PushResult:
    """What a push did on one target; ``error`` is set when it failed."""

    target: str
    ok: bool
    deploy: str | None = None
    previous: str | None = None
    changed: bool = False
    files_sent: int = 0
    files_reused: int = 0
    bytes_sent: int = 0
    bytes_reused: int = 0
    wheels_sent: int = 0
    wheel_bytes: int = 0
    env_created: bool = False
    repaired: tuple[str, ...] = ()
    smoke: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: EdgekitError | None = None

    def summary(self) -> str:
        if not self.ok:
            msg = self.error.message if self.error is not None else "failed"
            return f"FAILED: {msg}"
        what = "now current" if self.changed else "already current"
        sent = f"{self.files_sent} files / {self.bytes_sent / 1e6:.2f} MB sent"
        extra = (
            f", {self.wheels_sent} wheels / {self.wheel_bytes / 1e6:.1f} MB sent"
            if self.wheels_sent
            else ""
        )
        fixed = f", repaired {len(self.repaired)} corrupt files" if self.repaired else ""
        return (
            f"{self.deploy} {what} ({sent}, {self.files_reused} reused{extra}{fixed}; "
            f"{self.seconds:.0f} s)"
        )

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "error"}
        out["repaired"] = list(self.repaired)
        if self.error is not None:
            out["error"] = self.error.message
            out["hint"] = self.error.hint
        return out


def probe_connection(conn: Connection, root: str = DEFAULT_ROOT) -> DeviceInfo:
    """Run the probe script over an open connection (``edgekit.devices.probe`` connects
    to a target by name and calls this)."""
    res = conn.run(f"sh -s -- {q(root)}", input=PROBE_SCRIPT.encode(), timeout=120)
    return parse_probe(conn.name, res.stdout)


def package_release_id(package: Path) -> str:
    """A package's release id: the start of its manifest's sha256 (content addressed)."""
    return hashlib.sha256((package / MANIFEST).read_bytes()).hexdigest()[:12]


def _manifest_digest(package: Path, manifest: Manifest) -> str:
    """The sha256 of the manifest bytes ``read_manifest`` checked (read again only for a
    manifest built in memory)."""
    return manifest.sha256 or hashlib.sha256((package / MANIFEST).read_bytes()).hexdigest()


class _Push:
    """One target's push, step by step (so an error can say which step failed)."""

    def __init__(self, package: Path, manifest: Manifest, target: str, opts: PushOptions) -> None:
        self.package, self.manifest, self.opts = package, manifest, opts
        self.conn = connect(target, opts.connection)
        self.name = target
        self.layout = Layout(opts.root, manifest.name)
        self.rid = _manifest_digest(package, manifest)[:12]
        self.step = "connect"
        self.stats: dict[str, Any] = {
            "files_sent": 0,
            "files_reused": 0,
            "bytes_sent": 0,
            "bytes_reused": 0,
            "wheels_sent": 0,
            "wheel_bytes": 0,
            "env_created": False,
            "repaired": (),
        }
        self.previous: str | None = None

    def log(self, msg: str) -> None:
        if self.opts.verbose:
            say(f"{self.name}: {msg}")

    def sh(self, script: str, *, timeout: float = 300.0, check: bool = True) -> str:
        return self.conn.run(f"sh -c {q(script)}", timeout=timeout, check=check).stdout

    # -- steps -------------------------------------------------------------------------

    def run(self) -> PushResult:
        t0 = time.monotonic()
        with self.conn:
            self.conn.open()  # connect (and check the host key) before anything else
            self.step = "probe"
            info = probe_connection(self.conn, self.opts.root)
            self.log(f"{info.summary()}")
            self.info = info
            self._check_python(info)
            profile = info.profile(self.opts.backend)
            if self.opts.backend is None and profile.format not in self.manifest.formats:
                # an ONNX-only package (ONNX intake) runs on onnxruntime wherever it goes
                profile = info.profile("onnxruntime")
            if profile.backend == "edgetpu":
                self._check_edgetpu_stages()
            if profile.format not in self.manifest.formats:
                raise PushError(
                    f"{self.name}: the {profile.backend} backend runs {profile.format} models, "
                    f"which {self.package.name} lacks",
                    hint="convert with --formats tflite,onnx, or pick --backend",
                    target=self.name,
                )
            self.step = "lock"
            self._lock()
            self.step = "state"
            state = self._state()
            self.previous = state.get("current") or None
            self.step = "wheelhouse"
            wh = build_wheelhouse(info, profile, verbose=self.opts.verbose)
            deploy = f"{self.rid}-{wh.key}"
            self._check_space(info, wh)
            self.step = "environment"
            self._ensure_env(wh, profile)
            self.step = "package"
            folder = self._ensure_release(wh)
            if deploy == self.previous and folder == self.layout.release(self.rid):
                self.log(f"{deploy} is already current; nothing to switch")
                # still the package last pushed: the device's default, as after a switch
                self.sh(self.layout.default_script())
                return self._result(deploy, t0, changed=False, smoke={})
            self.step = "smoke test"
            smoke = self._smoke(wh, profile, folder)
            self.step = "switch"
            self._switch(deploy, wh, profile, folder)
            self.log(f"current -> {deploy} (was {self.previous or 'nothing'})")
            self.step = "prune"
            self.sh(self.layout.prune_script(), check=False)
            return self._result(deploy, t0, changed=True, smoke=smoke)

    def _check_edgetpu_stages(self) -> None:
        missing = [
            rel
            for st in self.manifest.stages
            if (rel := f"tflite/stage_{st.index}_edgetpu.tflite") not in self.manifest.files
        ]
        if missing:
            raise PushError(
                f"{self.name}: the Edge TPU runs only compiled stages, and {self.package.name} "
                f"lacks {', '.join(missing)}",
                hint="convert with --target coral, then put edgetpu_compiler (Coral's apt "
                "package edgetpu-compiler, x86-64) on this host's PATH and push again: push "
                "compiles the package's edgetpu/ stages; or pick --backend litert",
                target=self.name,
            )

    def _result(
        self, deploy: str, t0: float, *, changed: bool, smoke: dict[str, Any]
    ) -> PushResult:
        return PushResult(
            self.name,
            True,
            deploy,
            self.previous,
            changed,
            smoke=smoke,
            device=self.info.to_json(),
            seconds=time.monotonic() - t0,
            **self.stats,
        )

    def _lock(self, wait: float = 900.0) -> None:
        """Hold ``ROOT/.lock`` (flock) for the rest of this connection, so two pushes to one
        device (two aliases, two hosts) take turns. The lock is held by a ``cat`` reading
        this session's stdin: when the push ends or the link drops, it is released."""
        root = q(self.opts.root)
        chan = self.conn.client.get_transport().open_session()
        chan.exec_command(
            f"mkdir -p {root} && command -v flock >/dev/null || {{ echo nolock; exit 0; }}; "
            f"exec flock -w {int(wait)} {root}/.lock sh -c 'echo locked; exec cat'"
        )
        chan.settimeout(wait + 30)
        buf = b""
        while not buf.endswith(b"\n"):
            data = chan.recv(64)
            if not data:
                break
            buf += data
        if buf.strip() == b"nolock":
            self.log("no flock on the device; pushes to it are not serialised")
            return
        if buf.strip() != b"locked":
            raise PushError(
                f"{self.name}: another push to this device has held {self.opts.root}/.lock "
                f"for more than {wait:.0f} s",
                hint="wait for it to finish, then push again",
                target=self.name,
            )
        self._lock_chan = chan  # released when the connection closes

    def _check_python(self, info: DeviceInfo) -> None:
        if not info.python_ok:
            found = f"Python {info.python}" if info.python else "no python3"
            raise UnsupportedDeviceError(
                f"{self.name}: the device has {found}; edgekit needs Python 3.9 or newer "
                "with venv on the device",
                hint="install it on the device (Debian/Raspberry Pi OS: "
                "apt install python3 python3-venv), then push again",
                target=self.name,
                python=info.python,
            )
        if not info.python_venv:
            raise UnsupportedDeviceError(
                f"{self.name}: Python {info.python} on the device has no venv/ensurepip",
                hint="apt install python3-venv on the device, then push again",
                target=self.name,
            )

    def _state(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.sh(self.layout.state_script()).splitlines():
            k, _, v = line.partition("=")
            out[k] = v if k == "current" else out.get(k, "") + v + "\n"
        return out

    def _check_space(self, info: DeviceInfo, wh: Wheelhouse) -> None:
        """Refuse before sending anything when the device cannot hold it all."""
        pkg_bytes = sum((self.package / rel).stat().st_size for rel in self.manifest.files)
        need_mb = (pkg_bytes + wh.size * 4) / 1e6  # wheels, plus the environment unpacked
        if info.disk_free_mb < need_mb:
            raise DiskFullError(
                f"{self.name}: {info.disk_free_mb:.0f} MB free under {info.disk_path}, but the "
                f"push may need up to {need_mb:.0f} MB (package and environment); "
                "nothing was changed",
                hint=f"free space on the device (old versions live in {self.opts.root}) "
                "or push with --root on a bigger disk",
                target=self.name,
                free_mb=info.disk_free_mb,
                need_mb=need_mb,
            )

    # environment ---------------------------------------------------------------------

    def _ensure_env(self, wh: Wheelhouse, profile: Profile) -> None:
        env = self.layout.env(wh.key)
        if self.sh(f"test -f {q(env)}/.edgekit-ok && echo ok || true").strip() == "ok":
            self.log(f"environment {wh.key} is in place")
            return
        have = self._remote_sha256(f"{self.layout.wheels}/*.whl")
        missing = [w for w in wh.wheels if have.get(w.name) != file_sha256(w)]
        if missing:
            self.log(f"sending {len(missing)} of {len(wh.wheels)} wheels")
            self.sh(f"mkdir -p {q(self.layout.wheels)}")
            self._send([(w, f"{self.layout.wheels}/{w.name}") for w in missing], atomic=True)
            self.stats["wheels_sent"] = len(missing)
            self.stats["wheel_bytes"] = self.stats["bytes_sent"]
            self.stats["bytes_sent"] = 0
        else:
            self.log(f"all {len(wh.wheels)} wheels are on the device already")
        edgekit_pin = next(w.name.split("-")[1] for w in wh.wheels if w.name.startswith("edgekit-"))
        reqs = " ".join(
            q(r if r != "edgekit" else f"edgekit=={edgekit_pin}") for r in wh.requirements
        )
        module = {
            "litert": "ai_edge_litert",
            "edgetpu": "ai_edge_litert",
            "tflite": "tflite_runtime",
        }.get(profile.backend, profile.backend)
        self.log(f"creating environment {wh.key} on the device (pip install --no-index)")
        script = (
            f"set -e; rm -rf {q(env)}; mkdir -p {q(self.layout.root)}/envs; "
            f"{q(self.info.python_path)} -m venv {q(env)}; "
            f"{q(env)}/bin/python -m pip install --no-index --find-links {q(self.layout.wheels)} "
            f"--no-cache-dir --disable-pip-version-check -q {reqs}; "
            f"{q(env)}/bin/python -c 'import edgekit.runtime, {module}'; "
            f"touch {q(env)}/.edgekit-ok"
        )
        res = self.conn.run(f"sh -c {q(script)}", timeout=self.opts.install_timeout, check=False)
        if not res.ok:
            self.sh(f"rm -rf {q(env)}", check=False)
            self._raise_disk_full_if(res.stderr + res.stdout, "creating the environment")
            res.check()
        self.stats["env_created"] = True

    # package -------------------------------------------------------------------------

    def _remote_sha256(self, pattern: str) -> dict[str, str]:
        """``{relative path: sha256}`` of files matching a shell glob (or ``find`` root)."""
        out = self.sh(f'for f in {pattern}; do [ -f "$f" ] && sha256sum "$f"; done; true')
        got: dict[str, str] = {}
        for line in out.splitlines():
            digest, _, path = line.partition("  ")
            got[PurePosixPath(path).name] = digest
        return got

    def _listing(self) -> dict[str, str]:
        """``{path under releases/: sha256}`` of every file in every release on the device."""
        out = self.sh(
            f"cd {q(self.layout.releases)} 2>/dev/null || exit 0; "
            "find . -type f -exec sha256sum {} +",
            timeout=600,
        )
        got: dict[str, str] = {}
        for line in out.splitlines():
            digest, _, path = line.partition("  ")
            got[path.removeprefix("./")] = digest
        return got

    def _incoming(self) -> set[str]:
        """The sha256 of every file in ``ROOT/.incoming`` whose content matches its name."""
        out = self.sh(
            f"cd {q(self.layout.incoming)} 2>/dev/null || exit 0; "
            "find . -maxdepth 1 -type f -exec sha256sum {} +",
            timeout=600,
        )
        got = set()
        for line in out.splitlines():
            digest, _, path = line.partition("  ")
            if path.removeprefix("./") == digest:
                got.add(digest)
        return got

    def _ensure_release(self, wh: Wheelhouse) -> str:
        """Make sure a verified copy of the package exists; return its folder.

        Files travel to ``ROOT/.incoming/SHA256`` (a name the manifest cannot influence);
        the device then places them itself (``_agent place``), re-checking every path.
        """
        final = self.layout.release(self.rid)
        mdigest = _manifest_digest(self.package, self.manifest)
        files = dict(self.manifest.files)
        files[MANIFEST] = mdigest
        listing = self._listing()
        in_final = {
            k.split("/", 1)[1]: v for k, v in listing.items() if k.startswith(f"{self.rid}/")
        }
        bad = sorted(rel for rel, d in files.items() if rel in in_final and in_final[rel] != d)
        absent = sorted(rel for rel in files if rel not in in_final)
        if in_final and not bad and not absent:
            self.log(f"release {self.rid} is on the device and verified")
            return final
        if bad:
            self.log(
                f"release {self.rid} on the device has {len(bad)} corrupt files: {', '.join(bad)}"
            )
            self.stats["repaired"] = tuple(bad)
        partial = f"{final}.partial"
        # Any file the device holds with the right content is copied, not sent.
        by_digest: dict[str, str] = {}
        for path, digest in listing.items():
            by_digest.setdefault(digest, path)
        in_partial = {
            k.split("/", 1)[1]: v
            for k, v in listing.items()
            if k.startswith(f"{self.rid}.partial/")
        }
        arrived = self._incoming()
        local = {d: self.package / rel for rel, d in sorted(files.items())}
        needed = sorted({d for rel, d in files.items() if in_partial.get(rel) != d} | {mdigest})
        copies, sends = [], []
        for digest in needed:
            if digest in arrived:
                continue
            src = by_digest.get(digest)
            if src is not None:
                copies.append((src, digest))
            else:
                sends.append((local[digest], f"{self.layout.incoming}/{digest}"))
        inc = self.layout.incoming
        self.sh(
            f"mkdir -p {q(inc)}"
            + "".join(
                f"; cp -f {q(self.layout.releases + '/' + s)} {q(inc + '/' + d)}" for s, d in copies
            )
        )
        self.stats["files_reused"] = len(files) - len(sends)
        sent_digests = {PurePosixPath(remote).name for _, remote in sends}
        self.stats["bytes_reused"] = sum(
            (self.package / rel).stat().st_size for rel, d in files.items() if d not in sent_digests
        )
        if sends:
            self._send(sends, atomic=False)
        self.stats["files_sent"] = len(sends)
        self._place(wh, mdigest)
        self._verify(partial, files)
        return partial

    def _place(self, wh: Wheelhouse, mdigest: str) -> None:
        """Have the device check the package rule itself and place the files."""
        py = f"{self.layout.env(wh.key)}/bin/python"
        res = self.conn.run(
            f"{q(py)} -m edgekit.devices._agent place {q(mdigest)} --root {q(self.opts.root)}",
            timeout=600,
            check=False,
        )
        try:
            out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {"error": (res.stderr or res.stdout).strip()[-500:] or f"exit {res.exit_code}"}
        if res.ok and out.get("ok"):
            return
        msg = str(out.get("error"))
        self._raise_disk_full_if(msg, "placing the package files")
        raise PushError(
            f"{self.name}: {msg}; {self.previous or 'the previous version'} is still current",
            hint=out.get("hint") or "push again",
            target=self.name,
        )

    def _verify(self, folder: str, files: dict[str, str]) -> None:
        listing = "".join(f"{d}  {rel}\n" for rel, d in sorted(files.items()))
        res = self.conn.run(
            f"cd {q(folder)} && sha256sum -c --quiet -",
            input=listing.encode(),
            check=False,
            timeout=600,
        )
        if res.ok:
            self.log(f"{len(files)} files verified on the device (sha256)")
            return
        bad = [ln.split(":")[0] for ln in (res.stdout + res.stderr).splitlines() if "FAILED" in ln]
        self.sh("cd " + q(folder) + " && rm -f " + " ".join(q(b) for b in bad), check=False)
        raise PushError(
            f"{self.name}: {len(bad)} files failed their sha256 check on the device after "
            f"transfer ({', '.join(bad[:5])}); nothing was switched",
            hint="push again: only those files are sent again",
            target=self.name,
            files=bad,
        )

    def _send(self, items: Sequence[tuple[Path, str]], *, atomic: bool) -> None:
        total = sum(p.stat().st_size for p, _ in items)
        done = 0
        with Progress(
            f"{self.name}: sending {len(items)} files",
            total=max(1, total // 1024),
            unit="KiB",
            log_every=10.0,
            enabled=self.opts.verbose,
        ) as bar:
            for local, remote in items:
                base = done

                def progress(sent: int, _size: int, base: int = base) -> None:
                    bar.done = (base + sent) // 1024
                    bar.update(0)

                dest = f"{remote}.part" if atomic else remote
                size = local.stat().st_size
                try:
                    reused = 0 if atomic else self._resume(local, dest, size, progress)
                    if reused == 0:
                        self.conn.put(local, dest, progress)
                except ConnectionLostError:
                    raise
                except OSError as exc:
                    self._raise_disk_full_if(str(exc), f"sending {local.name}", force_check=True)
                    raise PushError(
                        f"{self.name}: could not write {remote} on the device ({exc})",
                        hint="check permissions under the push root (--root)",
                        target=self.name,
                    ) from None
                if atomic:
                    self.sh(f"mv -f {q(dest)} {q(remote)}")
                done += size
                self.stats["bytes_sent"] += size - reused
                self.stats["bytes_reused"] += reused
                bar.done = done // 1024

    def _resume(self, local: Path, remote: str, size: int, progress: Any) -> int:
        """Finish a file a cut push left part of under ``.incoming/SHA256``: append from
        the size that arrived, then check the whole file's sha256 on the device. Returns
        the bytes reused (0: nothing usable arrived, or the result did not verify and was
        removed, so the caller sends it whole)."""
        have = self.conn.size(remote)
        if not have or have >= size:
            return 0
        self.conn.put_from(local, remote, have, progress)
        digest = PurePosixPath(remote).name
        got = self.sh(f"sha256sum {q(remote)} 2>/dev/null || true").split(" ", 1)[0]
        if got == digest:
            self.log(f"resumed {local.name} from {have / 1e6:.2f} MB (sha256 verified)")
            return have
        self.log(f"the part of {local.name} on the device did not verify; sending it whole")
        self.sh(f"rm -f {q(remote)}", check=False)
        return 0

    def _raise_disk_full_if(self, text: str, what: str, *, force_check: bool = False) -> None:
        full = "No space left" in text or "Errno 28" in text
        if not full and force_check:
            out = self.sh(
                f"df -Pk {q(self.opts.root)} 2>/dev/null | awk 'NR==2 {{print $4}}'", check=False
            )
            full = out.strip().isdigit() and int(out.strip()) < 1024
        if full:
            raise DiskFullError(
                f"{self.name}: the device's disk filled up while {what}; "
                f"{self.previous or 'the previous version'} is still current",
                hint=f"free space on the device (old versions live in {self.opts.root}), "
                "then push again",
                target=self.name,
            )

    # smoke test and switch -----------------------------------------------------------

    def _smoke(self, wh: Wheelhouse, profile: Profile, folder: str) -> dict[str, Any]:
        threads = self.opts.threads or profile.threads
        py = f"{self.layout.env(wh.key)}/bin/python"
        res = self.conn.run(
            f"{q(py)} -m edgekit.devices._agent smoke {q(folder)} "
            f"--backend {q(profile.backend)} --threads {threads}",
            timeout=self.opts.smoke_timeout,
            check=False,
        )
        try:
            out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {"error": (res.stderr or res.stdout).strip()[-500:]}
        if not res.ok or "error" in out:
            raise PushError(
                f"{self.name}: the smoke test failed on the device: {out.get('error')}; "
                f"{self.previous or 'nothing'} stays current",
                hint=out.get("hint") or "run `edgekit device probe` and check the backend",
                target=self.name,
            )
        self.log(
            f"smoke test passed ({out['backend']}, label {out['labels'][0]}, "
            f"{out['latency_ms'][0]:.1f} ms, load {out['load_s']:.1f} s)"
        )
        return out

    def _switch(self, deploy: str, wh: Wheelhouse, profile: Profile, folder: str) -> None:
        final = self.layout.release(self.rid)
        d = f"{self.layout.deploys}/{deploy}"
        info = json.dumps(
            {
                "deploy": deploy,
                "release": self.rid,
                "env": wh.key,
                "backend": profile.backend,
                "threads": self.opts.threads or profile.threads,
                "package": self.manifest.name,
                "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        move = (
            f"rm -rf {q(final)}.old; [ -d {q(final)} ] && mv {q(final)} {q(final)}.old; "
            f"mv {q(folder)} {q(final)}; rm -rf {q(final)}.old; "
            if folder != final
            else ""
        )
        self.sh(
            f"set -e; {move}rm -rf {q(d)}; mkdir -p {q(d)}; "
            f"ln -s ../../releases/{q(self.rid)} {q(d)}/package; "
            f"ln -s ../../../envs/{q(wh.key)} {q(d)}/env; "
            f"echo {q(info)} > {q(d)}/deploy.json; "
            f"rm -rf {q(self.layout.releases)}/*.partial; " + self.layout.switch_script(deploy)
        )


_COMPILE_LOCK = threading.Lock()


def _compile_edgetpu(root: Path, manifest: Manifest, opts: PushOptions) -> Manifest:
    """Compile a ``--target coral`` package for the Edge TPU when edgetpu_compiler is here;
    returns the manifest to push (re-read when compiling added stages)."""
    if "coral" not in manifest.targets or shutil.which("edgetpu_compiler") is None:
        return manifest
    with _COMPILE_LOCK:  # parallel pushes of one package compile it once
        from edgekit.converters import ensure_compiled

        written = ensure_compiled(root)
        if written and opts.verbose:
            say(f"compiled {len(written)} stages for the Edge TPU with edgetpu_compiler")
        return read_manifest(root, verify=True)  # this push, or a parallel one, compiled it


def push_one(
    package: str | os.PathLike[str], target: str, options: PushOptions | None = None
) -> PushResult:
    """Push to one target; failures come back in the result, never half-switched."""
    opts = options or PushOptions()
    root = Path(package)
    manifest = read_manifest(root, verify=True)  # a hostile or corrupt package raises here
    try:
        manifest = _compile_edgetpu(root, manifest, opts)
    except EdgekitError as exc:  # the compiler failed: reported like any push failure
        return PushResult(target, False, error=exc)
    t0 = time.monotonic()
    job: _Push | None = None
    try:
        job = _Push(root, manifest, target, opts)
        return job.run()
    except Exception as exc:  # each target's failure is reported in its result
        err = (
            exc
            if isinstance(exc, EdgekitError)
            else PushError(f"{target}: {type(exc).__name__}: {exc}", target=target)
        )
        step = job.step if job is not None else "connect"
        previous = job.previous if job is not None else None
        if isinstance(exc, ConnectionLostError):
            err = PushError(
                f"{target}: the SSH link dropped during the {step} step; "
                f"{previous or 'the previous version'} is still current",
                hint="push again when the link is back: what already reached the device "
                "is not sent again",
                target=target,
                step=step,
            )
        if opts.verbose:
            say(f"{target}: push failed during {step}: {err.message}")
        return PushResult(
            target, False, previous=previous, seconds=time.monotonic() - t0, error=err
        )


def push(
    package: str | os.PathLike[str],
    targets: Sequence[str],
    options: PushOptions | None = None,
    *,
    jobs: int | None = None,
) -> GroupResult[PushResult]:
    """Push to several targets in parallel; returns ``{target: PushResult}`` for every one
    (a :class:`GroupResult`: ``.succeeded`` and ``.failed`` split it).

    One target failing never hides another's result.
    """
    opts = options or PushOptions()
    read_manifest(Path(package), verify=True)  # a corrupt package fails here, before any device
    with ThreadPoolExecutor(max_workers=jobs or min(8, max(1, len(targets)))) as pool:
        futures = {t: pool.submit(push_one, package, t, opts) for t in targets}
    return GroupResult({t: f.result() for t, f in futures.items()})
