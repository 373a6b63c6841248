"""The layout edgekit keeps on a device, and the shell snippets that read and change it.

::

    ROOT/wheels/*.whl                    wheels pushed from the host (reused by later pushes)
    ROOT/envs/KEY/                       a virtual environment per wheel set (.edgekit-ok when done)
    ROOT/NAME/releases/RID/              a package, RID = sha256(manifest.json)[:12]
    ROOT/NAME/releases/RID.partial/      a package still arriving (never loaded)
    ROOT/NAME/deploys/RID-KEY/           package -> ../../releases/RID, env -> ../../../envs/KEY
    ROOT/NAME/current -> deploys/...     switched atomically (rename of a new symlink)
    ROOT/NAME/history                    one deploy per line, the last is current
    ROOT/current -> NAME/current         the package pushed last
    ROOT/.incoming/SHA256                files arriving, named by their content (push places
                                         them into RID.partial on the device, re-checking
                                         every path: see ``_agent place``)

NAME is checked against the package rule (``edgekit._package.check_name``) before any
path is built from it, so no path here leaves ROOT.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from edgekit._package import check_name

__all__ = ["DEFAULT_ROOT", "Layout", "q"]

DEFAULT_ROOT = "/opt/edgekit"
KEEP = 3  # deploys kept per package for rollback
_HEX = re.compile(r"[0-9a-f]{12}")


def q(s: str) -> str:
    return shlex.quote(s)


@dataclass(frozen=True)
class Layout:
    """Paths of one package under ``root`` on a device."""

    root: str
    name: str

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def incoming(self) -> str:
        """Where files arrive before the device places them, named by their sha256."""
        return f"{self.root}/.incoming"

    @property
    def pkg(self) -> str:
        return f"{self.root}/{self.name}"

    @property
    def releases(self) -> str:
        return f"{self.pkg}/releases"

    @property
    def deploys(self) -> str:
        return f"{self.pkg}/deploys"

    @property
    def current(self) -> str:
        return f"{self.pkg}/current"

    @property
    def wheels(self) -> str:
        return f"{self.root}/wheels"

    def env(self, key: str) -> str:
        return f"{self.root}/envs/{key}"

    def release(self, rid: str) -> str:
        if not _HEX.fullmatch(rid):
            raise ValueError(f"a release id is 12 hex digits, not {rid!r:.40}")
        return f"{self.releases}/{rid}"

    def state_script(self) -> str:
        """Prints ``current=``, ``history=`` lines and the deploys that exist."""
        return (
            f"echo current=$(readlink {q(self.current)} 2>/dev/null | sed 's#^deploys/##'); "
            f"[ -f {q(self.pkg)}/history ] && sed 's/^/history=/' {q(self.pkg)}/history; "
            f"ls {q(self.deploys)} 2>/dev/null | sed 's/^/deploy=/'; true"
        )

    def switch_script(self, deploy: str) -> str:
        """Point ``current`` at ``deploy`` atomically and record it in the history."""
        p = q(self.pkg)
        return (
            f"set -e; cd {p}; ln -sfn deploys/{q(deploy)} current.new; mv -T current.new current; "
            f"echo {q(deploy)} >> history; " + self.default_script()
        )

    def default_script(self) -> str:
        """Make this package the device's default (``ROOT/current``: what ``run``,
        ``device predict`` and ``bench`` use when no package is named)."""
        return (
            f"cd {q(self.root)}; ln -sfn {q(self.name)}/current current.new; "
            "mv -T current.new current"
        )

    def prune_script(self) -> str:
        """Drop deploys, releases and environments nothing recent refers to."""
        p, r = q(self.pkg), q(self.root)
        return (
            f"cd {p} 2>/dev/null || exit 0; "
            f"keep=$(tac history 2>/dev/null | awk '!seen[$0]++' | head -n {KEEP}); "
            'for d in deploys/*; do [ -e "$d" ] || continue; b=${d#deploys/}; '
            'echo "$keep" | grep -qx "$b" || rm -rf "$d"; done; '
            "for rel in releases/*; do case $rel in *.partial) continue;; esac; "
            '[ -d "$rel" ] || continue; id=${rel#releases/}; '
            'ls deploys 2>/dev/null | grep -q "^$id-" || rm -rf "$rel"; done; '
            f'for e in {r}/envs/*; do [ -d "$e" ] || continue; k=${{e##*/}}; '
            f'ls -d {r}/*/deploys/*-"$k" >/dev/null 2>&1 || rm -rf "$e"; done; '
            f"rm -rf {q(self.incoming)}; true"
        )
