"""System calls every part of the emulator makes: run a command (its failures as
:class:`EmulatorError`), write a file atomically, hold a lock, look at processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._emu_errors import EmulatorError, HostNotSupported

__all__ = ["SYS_PATH"]

SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (LC_ALL=C); a missing tool is :class:`HostNotSupported`, a failure (with
    ``check``) or a timeout :class:`EmulatorError` carrying the command's last output."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError as exc:
        raise HostNotSupported(
            f"{argv[0]} is not installed",
            hint="install the emulator's system packages: `make system-deps` "
            "(apt-get install qemu-user-static binfmt-support debootstrap openssh-server iproute2)",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise EmulatorError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise EmulatorError(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}",
            command=list(argv),
            returncode=proc.returncode,
        )
    return proc


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_root() -> bool:
    return os.geteuid() == 0


def _user_home() -> Path:
    """The invoking user's home, also under sudo (whose HOME may be root's)."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and sudo_user != "root":
        import pwd

        with contextlib.suppress(KeyError):
            return Path(pwd.getpwnam(sudo_user).pw_dir)
    return Path.home()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child (sshd started by this process) and has exited."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
