"""SSH keys for a virtual device: which public key to authorize (``--key`` may name either
half, ``--key-generate`` makes a pair) and host key fingerprints as ``ssh-keygen -l`` prints."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from edgekit._progress import say

from ._emu_errors import EmulatorError
from ._emu_sys import _run, _user_home

__all__: list[str] = []


_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")


def _resolve_key(key: str | Path | None, generate: bool) -> tuple[Path, Path | None]:
    """(public key, private key or None) from --key, which may name either half."""
    p = Path(key).expanduser() if key else _user_home() / ".ssh" / "id_ed25519.pub"
    pub, priv = (p, p.with_suffix("")) if p.suffix == ".pub" else (p.with_name(p.name + ".pub"), p)
    if not pub.exists():
        if not generate:
            raise EmulatorError(
                f"no SSH public key at {pub} to install on the virtual device",
                hint=f"pass --key PATH.pub, or --key-generate to create {priv} and {pub}",
                key=str(pub),
            )
        if priv.exists():
            raise EmulatorError(
                f"{priv} exists but {pub} does not",
                hint=f"recreate it: ssh-keygen -y -f {priv} > {pub}",
            )
        priv.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit", "-f", str(priv)])
        uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
        if uid and gid and str(priv).startswith(str(_user_home())):
            for f in (priv, pub):
                os.chown(f, int(uid), int(gid))
        say(f"generated an SSH key pair: {priv}")
    text = pub.read_text().strip()
    if not text.startswith(_KEY_TYPES) or len(text.split()) < 2:
        raise EmulatorError(
            f"{pub} is not an OpenSSH public key",
            hint="give the .pub file written by ssh-keygen (a line like 'ssh-ed25519 AAAA...')",
        )
    return pub, (priv if priv.exists() else None)


def _fingerprint(pubkey_line: str) -> str:
    blob = base64.b64decode(pubkey_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
