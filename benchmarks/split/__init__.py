"""Split-computing benchmark: the device behind a shaped link, the server on the host.

    sudo .venv/bin/python -m benchmarks.split --package build/fmnist-fast.edgepkg --out build/split

Needs root (network namespace, veth pair, ``tc``). The device runs in its own network
namespace, joined to the host by a veth pair whose two ends are both shaped with
``tc qdisc ... tbf rate R burst B latency 400ms`` (R = 1, 10, 100 Mbit/s; this kernel
has no netem, so ``--rtt-ms`` adds fixed latency with a small sleeping TCP proxy in user
space instead). ``edgekit serve`` runs on the host end. For every link setting, the same
test images go through: local-only, full offload (split 0: the input itself), every static
split, and the bandit (after a warm-up), and the table shows mean end-to-end latency as
the caller sees it and bytes sent, with the ratios the issue asks for.

The bucket is ``--burst`` (default 1600 bytes, about one packet): with the 32 kbit of
the usual example, a 900-byte request that finds the bucket full crosses at line rate, so
a policy that offloads now and then never feels a 1 Mbit/s link at all, while one that
always offloads does; the small bucket makes every request pay close to its
serialization time. Policies run in 25 interleaved blocks, and the link rests 30 ms before
each block, so every policy meets the same machine and the same link. The bandits use
``--lam 1`` (cost weighs as much as confidence): for the split-only bandit every arm
answers with the last exit, so lambda only scales the gaps between arms, and a larger
one means less exploration of the slow ones.

The device is this machine's CPU. With ``--device-slowdown F`` (default 10) every local
stage takes F times its measured time here (the runtime runs it, then sleeps (F-1) times
its median time, through ``edgekit.load``'s ``wrap_stage`` seam: ``slow.SlowDevice``, which
the split demo uses too): an emulated slower board; the factor is a parameter, not a
measurement of any board. Without it the server's tail is no faster than the device's, and
offloading could only lose. The device process is pinned to CPU 0 with one interpreter
thread, the server to CPU 1 (``taskset``), so the two do not compete with each other
(other load on a shared host still does); the unsplit single-call path is off on the
device so that every local stage is timed and slowed alike.

``--demo`` (no root): the same device and server on loopback, no shaping, a short run of
local-only vs the bandit with a server (what ``make demo`` shows).

The package: ``worker`` (the device process and the server process), ``link`` (the
namespace, the shaped veth pair, the delay proxy), ``slow`` (the emulated slower device),
``report`` (summaries, tables, JSON), ``plots`` (PNG) and ``cli`` (the arguments, ``bench``
and ``demo``); ``python -m benchmarks.split`` runs ``cli.main``.
"""

from __future__ import annotations

from .cli import bench, demo, main
from .link import TBF, DelayProxy, Link
from .slow import SlowDevice, SlowedStage, check_factor, measure_device
from .worker import NEVER, ROUNDS, SETTLE_S, VENV_BIN, worker

__all__ = [
    "NEVER",
    "ROUNDS",
    "SETTLE_S",
    "TBF",
    "VENV_BIN",
    "DelayProxy",
    "Link",
    "SlowDevice",
    "SlowedStage",
    "bench",
    "check_factor",
    "demo",
    "main",
    "measure_device",
    "worker",
]
