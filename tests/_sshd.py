"""Test helpers: a real OpenSSH server on loopback, and a TCP proxy that can cut the link."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _net import free_port


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when ``condition`` is false (under CI the skip rule in conftest.py
    turns that skip into a failure unless SKIPS_ALLOWED lists it)."""
    if not condition:
        pytest.skip(reason)


def wait_banner(
    host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait for an SSH banner on ``host:port``; with ``proc``, raise at once if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerExited(f"the server for {host}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), 2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SSH banner on {host}:{port}")
        time.sleep(0.2)


class ServerExited(RuntimeError):
    """The server process ended before it answered."""


#: How many ports ``start_sshd`` tries when the one it picked is taken before sshd binds it.
SSHD_PORT_ATTEMPTS = 5


@dataclass
class Sshd:
    """The host's own sshd on 127.0.0.1:port, logging in as the current user with a key."""

    port: int
    key: Path
    host_pub: str
    known_hosts: Path
    proc: subprocess.Popen[bytes]

    @property
    def target(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    def known_line(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        name = f"[{host}]:{port or self.port}"
        kind, b64 = self.host_pub.split()[:2]
        return f"{name} {kind} {b64}\n"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_sshd(folder: Path) -> Sshd:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    need(os.geteuid() == 0, "the loopback sshd tests log in as root and need root")
    need(Path(sshd).exists(), "OpenSSH server (sshd) is not installed (apt install openssh-server)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("hostkey", "id"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)],
            check=True,
            timeout=600,
        )
    (folder / "authorized_keys").write_text((folder / "id.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)
    # The port was free a moment ago; another process may bind it before sshd does. sshd
    # then exits with "Address already in use": try another port, a bounded number of times.
    for attempt in range(1, SSHD_PORT_ATTEMPTS + 1):
        port = free_port()
        log = folder / "sshd.log"
        proc = _popen_sshd(sshd, folder, port, log)
        try:
            wait_banner("127.0.0.1", port, proc=proc)
            break
        except ServerExited:
            proc.wait(10)
            text = log.read_text(errors="replace")
            if "address already in use" not in text.lower() or attempt == SSHD_PORT_ATTEMPTS:
                raise ServerExited(f"sshd on port {port} exited: {text[-2000:]}") from None
        except BaseException:
            proc.kill()
            proc.wait(10)
            raise
    known = folder / "known_hosts"
    s = Sshd(port, folder / "id", (folder / "hostkey.pub").read_text(), known, proc)
    known.write_text(s.known_line())
    return s


def _popen_sshd(sshd: str, folder: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sshd, "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1",
                "-h", str(folder / "hostkey"), "-o", f"AuthorizedKeysFile={folder}/authorized_keys",
                "-o", "StrictModes=no", "-o", "PasswordAuthentication=no", "-o", "UsePAM=no",
                "-o", "PidFile=none", "-o", "PermitRootLogin=prohibit-password",
                "-o", "AllowTcpForwarding=yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip


class CutProxy:
    """Forwards 127.0.0.1:port to ``upstream``; once ``cut_after`` bytes went upstream on a
    connection, it drops that connection (a link that dies in the middle of a transfer).

    Before dropping it stops forwarding and waits until the server has gone quiet (its
    answers to what it got, e.g. SFTP write acks, have all come back), so what was forwarded
    has reached the server's disk: what a resumed push can reuse does not depend on how far
    behind a loaded server's SFTP process was when the link died."""

    def __init__(self, upstream: tuple[str, int], cut_after: int | None = None) -> None:
        self.upstream, self.cut_after = upstream, cut_after
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.cuts = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            sent, heard = [0], [time.monotonic()]
            for args in ((client, up, sent, heard), (up, client, None, heard)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, sent: list[int] | None, heard: list[float]
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if sent is None:
                    heard[0] = time.monotonic()  # the server said something
                else:
                    sent[0] += len(data)
                    if self.cut_after is not None and sent[0] > self.cut_after:
                        self.cuts += 1
                        self._drain(heard)
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    @staticmethod
    def _drain(heard: list[float], quiet: float = 1.0, most: float = 15.0) -> None:
        """Wait until the server has said nothing for ``quiet`` seconds (at most ``most``)."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline and time.monotonic() - heard[0] < quiet:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def add_cut_files(pkg: Path, first: int, second: int) -> tuple[Path, Path]:
    """Add two random files to a package (and its manifest) whose sha256 order makes a push
    send the ``first``-byte one before the ``second``-byte one: a link cut after
    ``first + second // 2`` bytes then leaves one whole new file and half of another on the
    device, and the next push can show that it reuses both."""
    import hashlib

    import numpy as np

    from edgekit import read_manifest
    from edgekit._package import write_manifest  # internal: a tampered manifest

    seed = 0
    while True:
        rng = np.random.default_rng(seed)
        a, b = rng.bytes(first), rng.bytes(second)
        if hashlib.sha256(a).hexdigest() < hashlib.sha256(b).hexdigest():
            break
        seed += 1
    (pkg / "extra_a.bin").write_bytes(a)
    (pkg / "extra_b.bin").write_bytes(b)
    write_manifest(pkg, read_manifest(pkg, verify=False))
    return pkg / "extra_a.bin", pkg / "extra_b.bin"


def reusable(old: Path, new: Path) -> tuple[int, int]:
    """``(files, bytes)`` of package ``new`` that a device holding package ``old`` already
    has (same sha256): what a fresh push of ``new`` after ``old`` reuses at best."""
    from edgekit import read_manifest

    have = set(read_manifest(old, verify=False).files.values())
    same = [rel for rel, d in read_manifest(new, verify=False).files.items() if d in have]
    return len(same), sum((new / rel).stat().st_size for rel in same)
