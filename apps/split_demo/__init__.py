"""Split computing shown live: ``python -m apps.split_demo build/fmnist.edgepkg``.

Starts ``edgekit serve`` (or uses ``--server URL``), streams Fashion-MNIST test images
through ``edgekit.load(pkg, offload=URL, policy="bandit:swucb")`` and prints where each
input ended while the link is stepped (tc tbf, as root), the server slowed, killed and
restarted. The device is emulated ``--device-slowdown`` times (default 100) slower than
this host (each local stage sleeps the difference, through ``wrap_stage``): on one host
the server is no faster than the device, and offloading could not pay. The page is the
smart camera's.
"""

from ._demo import Phase, main

__all__ = ["Phase", "main"]
