"""The device commands of the ``edgekit`` command line, for the CLI that assembles them.

``register(sub)`` adds ``device``, ``push``, ``run`` and ``rollback``; ``ssh_arguments(p)``
adds the SSH options they share to another command's parser (``edgekit bench PKG
TARGET``), and ``remote_bench(args, xs)`` runs that command on the targets.
"""

from __future__ import annotations

from ._cli import register, remote_bench, ssh_arguments

__all__ = ["register", "remote_bench", "ssh_arguments"]
