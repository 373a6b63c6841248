"""An SSH connection to one device (paramiko): opens on first use, closes in ``__exit__``.

Host keys are checked against known_hosts; an unknown key is refused (with its
fingerprint) unless the caller accepts new keys, which then get recorded. Passwords are
used for the login only and never stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit._errors import require

from ._errors import (
    ConnectError,
    ConnectionLostError,
    HostKeyMismatchError,
    RemoteCommandError,
    UnknownHostKeyError,
)
from ._target import Target, parse_target

__all__ = ["Connection", "RunResult", "fingerprint"]

ProgressFn = Callable[[int, int], None]


def _paramiko() -> Any:
    return require("paramiko", "deploy", purpose="talking to devices over SSH")


def fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class RunResult:
    """What a command on the device did."""

    target: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> RunResult:
        """Raise :class:`RemoteCommandError` unless the command succeeded."""
        if self.exit_code != 0:
            tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-8:]
            raise RemoteCommandError(
                f"{self.target}: `{self.command[:120]}` exited with {self.exit_code}"
                + (":\n    " + "\n    ".join(tail) if tail else ""),
                target=self.target,
                exit_code=self.exit_code,
                stderr=self.stderr,
            )
        return self


_LINK_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, socket.timeout)


class Connection:
    """One device over SSH. ``Connection("pi0")`` or ``Connection("root@10.0.0.5:2222")``.

    Nothing happens until the first command; ``with Connection(...) as c:`` closes it.
    """

    def __init__(
        self,
        target: Target | str,
        *,
        ssh_config: str | os.PathLike[str] | None = None,
        accept_new_host_key: bool = False,
        known_hosts: str | os.PathLike[str] | None = None,
        password: str | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.target = (
            target if isinstance(target, Target) else parse_target(target, ssh_config=ssh_config)
        )
        self._ssh_config = ssh_config
        self.accept_new_host_key = accept_new_host_key
        files = [Path(known_hosts)] if known_hosts else [Path(p) for p in self.target.known_hosts]
        self.known_hosts_files = files or [Path.home() / ".ssh" / "known_hosts"]
        self._password = password
        self._timeout = connect_timeout or self.target.connect_timeout
        self._client: Any = None
        self._sftp: Any = None
        self._jump: Connection | None = None

    # -- connection ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def client(self) -> Any:
        """The paramiko ``SSHClient``, connected on first use."""
        if self._client is None or not self.alive:
            self.close()
            self._client = self._connect()
        return self._client

    def open(self) -> Connection:
        """Connect now (normally the first command does)."""
        _ = self.client
        return self

    @property
    def alive(self) -> bool:
        t = self._client.get_transport() if self._client is not None else None
        return bool(t is not None and t.is_active())

    def _connect(self) -> Any:
        paramiko = _paramiko()
        t = self.target
        client = paramiko.SSHClient()
        for f in self.known_hosts_files:
            if f.is_file():
                client.load_host_keys(str(f))
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        sock = self._jump_sock() if t.proxy_jump else None
        ids = [p for p in t.identity_files if Path(p).is_file()]
        try:
            client.connect(
                t.host,
                port=t.port,
                username=t.user,
                key_filename=ids or None,
                password=self._password,
                look_for_keys=not ids,
                allow_agent=True,
                timeout=self._timeout,
                banner_timeout=self._timeout,
                auth_timeout=self._timeout,
                sock=sock,
            )
        except (UnknownHostKeyError, ConnectError):
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatchError(
                f"{t.name}: the host key of {t.known_hosts_key} is {fingerprint(exc.key)}, "
                f"not the one known_hosts records ({fingerprint(exc.expected_key)}); "
                "this can be a reinstalled device or someone in between",
                hint=f"if the device was reinstalled: ssh-keygen -R '{t.known_hosts_key}'",
                target=t.name,
                fingerprint=fingerprint(exc.key),
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise ConnectError(
                f"{t.name}: {t.user}@{t.host} refused the login ({exc})",
                hint="check the user and IdentityFile (ssh-copy-id installs your key), "
                "or pass --ask-password",
                target=t.name,
            ) from None
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise ConnectError(
                f"{t.name}: cannot reach {t.host}:{t.port} ({exc or type(exc).__name__})",
                hint="is the device on and sshd running? `ssh -v` shows the same route",
                target=t.name,
            ) from None
        self._password = None  # used for this login only
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return client

    def _jump_sock(self) -> Any:
        hops = [h.strip() for h in (self.target.proxy_jump or "").split(",") if h.strip()]
        last = parse_target(hops[-1], ssh_config=self._ssh_config)
        if len(hops) > 1:
            last = Target(**{**last.__dict__, "proxy_jump": ",".join(hops[:-1])})
        self._jump = Connection(
            last,
            ssh_config=self._ssh_config,
            accept_new_host_key=self.accept_new_host_key,
            connect_timeout=self._timeout,
        )
        transport = self._jump.client.get_transport()
        return transport.open_channel("direct-tcpip", (self.target.host, self.target.port), ("", 0))

    def close(self) -> None:
        """Close the SFTP session, the SSH connection and any jump host behind it."""
        for obj in (self._sftp, self._client):
            if obj is not None:
                with contextlib.suppress(Exception):  # closing a dead link may fail
                    obj.close()
        self._sftp = self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Connection {self.target.name} ({self.target.address})>"

    # -- commands --------------------------------------------------------------------------

    def run(
        self,
        command: str | list[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        input: bytes | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Run a command on the device (a list is quoted for the shell).

        ``on_output`` receives stdout as it arrives (for commands whose output a person
        watches). A dropped link raises :class:`ConnectionLostError`.
        """
        cmd = command if isinstance(command, str) else " ".join(shlex.quote(c) for c in command)
        t0 = time.monotonic()
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            chan = self.client.get_transport().open_session()
            chan.settimeout(0.2)
            chan.exec_command(cmd)
            if input is not None:
                chan.sendall(input)
            chan.shutdown_write()
            while True:
                got = False
                while chan.recv_ready():
                    data = chan.recv(65536)
                    out.append(data)
                    got = True
                    if on_output is not None:
                        on_output(data.decode(errors="replace"))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                    got = True
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
                if not self.alive:
                    raise EOFError("transport closed")
                if timeout is not None and time.monotonic() - t0 > timeout:
                    chan.close()
                    raise RemoteCommandError(
                        f"{self.name}: `{cmd[:120]}` did not finish within {timeout:.0f} s",
                        target=self.name,
                        exit_code=-1,
                        stderr=b"".join(err).decode(errors="replace"),
                    )
                if not got:
                    time.sleep(0.005)
            code = chan.recv_exit_status()
            chan.close()
        except RemoteCommandError:
            raise
        except (*_LINK_ERRORS, _paramiko().SSHException) as exc:
            self.close()
            raise ConnectionLostError(
                f"{self.name}: the SSH connection dropped while running `{cmd[:80]}` ({exc})",
                hint="check the link and run the command again",
                target=self.name,
            ) from None
        res = RunResult(
            self.name,
            cmd,
            code,
            b"".join(out).decode(errors="replace"),
            b"".join(err).decode(errors="replace"),
            time.monotonic() - t0,
        )
        return res.check() if check else res

    # -- files -----------------------------------------------------------------------------

    @property
    def sftp(self) -> Any:
        if self._sftp is None or not self.alive:
            self._sftp = self.client.open_sftp()
        return self._sftp

    @contextlib.contextmanager
    def _file_op(self, what: str) -> Iterator[None]:
        """A dropped link becomes ConnectionLostError; a file-level error (permission, no
        space) on a live link is left for the caller to map."""
        try:
            yield
        except (*_LINK_ERRORS, _paramiko().SSHException) as exc:
            if isinstance(exc, OSError) and self.alive and not isinstance(exc, socket.timeout):
                raise
            self.close()
            raise ConnectionLostError(
                f"{self.name}: the SSH connection dropped while {what} ({exc})",
                hint="run the command again: files already on the device are not sent twice",
                target=self.name,
            ) from None

    def put(
        self, local: str | os.PathLike[str], remote: str, progress: ProgressFn | None = None
    ) -> int:
        """Copy a file to the device; returns its size. Raises ConnectionLostError on a drop."""
        with self._file_op(f"sending {Path(local).name}"):
            self.sftp.put(os.fspath(local), remote, callback=progress, confirm=True)
        return Path(local).stat().st_size

    def size(self, remote: str) -> int | None:
        """The size of a file on the device, or None when there is none."""
        with self._file_op(f"checking {remote}"):
            try:
                st = self.sftp.stat(remote)
            except FileNotFoundError:
                return None
        return None if st.st_size is None else int(st.st_size)

    def put_from(
        self,
        local: str | os.PathLike[str],
        remote: str,
        offset: int,
        progress: ProgressFn | None = None,
    ) -> int:
        """Send the rest of a file the device holds the first ``offset`` bytes of (a cut
        transfer); returns the bytes sent. The caller verifies the whole file afterwards."""
        size = Path(local).stat().st_size
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} is outside {local} ({size} bytes)")
        sent = 0
        with (
            self._file_op(f"sending {Path(local).name}"),
            open(local, "rb") as src,
            self.sftp.open(remote, "r+b") as dst,
        ):
            src.seek(offset)
            dst.seek(offset)
            dst.set_pipelined(True)
            while chunk := src.read(32768):
                dst.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(offset + sent, size)
            dst.truncate(size)
        return sent

    def put_bytes(self, data: bytes, remote: str) -> None:
        """Write ``data`` to a file on the device."""
        with self._file_op(f"writing {remote}"), self.sftp.open(remote, "wb") as f:
            f.write(data)

    def get_bytes(self, remote: str) -> bytes:
        """Read a (small) file from the device."""
        with self.sftp.open(remote, "rb") as f:
            data: bytes = f.read()
        return data


class _HostKeyPolicy:
    """Refuse unknown host keys, or record them when the user accepted new ones."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        fp = fingerprint(key)
        t = self.conn.target
        if not self.conn.accept_new_host_key:
            raise UnknownHostKeyError(
                f"{t.name}: {hostname} is not in known_hosts; its {key.get_name()} key is {fp}",
                hint="check the fingerprint on the device (ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub) and pass --accept-new-host-key "
                "to trust and record it",
                target=t.name,
                fingerprint=fp,
            )
        path = self.conn.known_hosts_files[0]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
