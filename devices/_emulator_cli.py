"""``edgekit device emulate``: the virtual arm64 Raspberry Pi (see _emulator.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _print_device(dev: Any, *, started: bool) -> None:
    net = (
        f"network namespace {dev.netns}, host side {dev.veth} ({dev.host_address}); "
        "no route beyond the host"
        if dev.netns
        else "host loopback (name resolution disabled inside)"
    )
    print(f"virtual device {dev.name} {'started' if started else 'is already running'}")
    print(f"  target:       {dev.target}")
    print(f"  platform:     {dev.arch}, Debian bookworm, Python {dev.python_version or 'none'}")
    if dev.model:
        print(f"  board:        {dev.model}")
    print(f"  network:      {net}" + (f", shaped to {dev.rate}" if dev.rate else ""))
    if dev.disk_limit:
        print(f"  disk:         {dev.disk_limit} writable under {dev.disk_limit_path}")
    print(f"  host key:     {dev.host_key_fingerprint} (ED25519)")
    print(f"  known_hosts:  {dev.known_hosts_line}")
    print(f"                (also in {dev.known_hosts_path})")
    print(f"  sshd:         pid {dev.sshd_pid}, log {dev.state_dir / 'sshd.log'}")
    print()
    print("# for ~/.ssh/config (or pass --ssh-config ~/.ssh/config to write it):")
    print(dev.ssh_config_block(), end="")
    print()
    print(f"then: ssh {dev.name} uname -m    # aarch64")


def _cmd_start(args: argparse.Namespace) -> int:
    from . import _emulator as emu

    was_running = emu.status(args.name, probe=False).running if emu._is_root() else False
    dev = emu.start(
        args.name,
        key=args.key,
        key_generate=args.key_generate,
        loopback=args.loopback,
        port=args.port,
        cache=args.rootfs_cache,
        rate=args.rate,
        python=args.python,
        disk_limit=args.disk_limit,
        model=args.model,
        verbose=not args.json,
    )
    if args.ssh_config:
        path = dev.write_ssh_config(args.ssh_config)
        print(f"edgekit: wrote Host {dev.name} to {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(dev.to_dict(), indent=2))
    else:
        _print_device(dev, started=not was_running)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from . import _emulator as emu

    names = [s.name for s in emu.list_devices(probe=False)] if args.all else [args.name]
    for name in names:
        was = emu.stop(name, purge=args.purge)
        what = "stopped" if was else "was not running"
        print(f"virtual device {name} {what}" + ("; its disk was discarded" if args.purge else ""))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from . import _emulator as emu

    states = [emu.status(args.name)] if args.name else emu.list_devices()
    if args.json:
        out = [s.to_dict() for s in states]
        print(json.dumps(out[0] if args.name else out, indent=2))
        return 0
    if not states:
        print("no virtual devices (start one: edgekit device emulate start)")
    for s in states:
        dev = s.device
        if dev is None:
            print(f"{s.name}: never started")
            continue
        if s.running:
            state = "running" if s.ready else "running (sshd not answering)"
        else:
            state = "stopped"
        net = f"netns {dev.netns}, veth {dev.veth}" if dev.netns else "loopback"
        rate = f", shaped {dev.rate}" if dev.rate and s.running else ""
        print(
            f"{s.name}: {state}  {dev.target}  {dev.arch}  port {dev.port}  {net}{rate}  "
            f"pids {','.join(map(str, s.pids)) or '-'}"
        )
    return 0


def _cmd_shape(args: argparse.Namespace) -> int:
    from . import _emulator as emu

    dev = emu.shape(args.name, None if args.rate == "none" else args.rate)
    what = f"limited to {dev.rate} both ways on {dev.veth}" if dev.rate else "unshaped"
    print(f"virtual device {dev.name}: bandwidth {what}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from . import _emulator as emu

    print(emu.build_rootfs(args.rootfs_cache, force=args.force))
    return 0


def register(device_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``emulate start|stop|status|shape|build`` under ``edgekit device``."""
    em = device_sub.add_parser(
        "emulate",
        help="a virtual arm64 Raspberry Pi (qemu-user + a real sshd; root only)",
        description="Run a Debian bookworm arm64 device under qemu-user with a real OpenSSH "
        "server, in its own network namespace (no route to any package index) or on loopback.",
    )
    esub = em.add_subparsers(dest="emulate_command", required=True, metavar="ACTION")

    def name_arg(p: argparse.ArgumentParser, default: str | None = "pi0") -> None:
        p.add_argument("--name", default=default, help=f"device name (default: {default or 'all'})")

    s = esub.add_parser("start", help="start a device (builds the cached rootfs once)")
    name_arg(s)
    s.add_argument("--key", metavar="PATH", help="public key to authorize (~/.ssh/id_ed25519.pub)")
    s.add_argument("--key-generate", action="store_true", help="create the key pair if missing")
    s.add_argument("--loopback", action="store_true", help="sshd on 127.0.0.1:PORT, no netns")
    s.add_argument("--port", type=int, default=2222, help="loopback port (default 2222)")
    s.add_argument("--rootfs-cache", metavar="DIR", help="cache dir (EDGEKIT_EMULATOR_CACHE)")
    s.add_argument("--rate", help="shape bandwidth both ways with tc tbf, e.g. 10mbit")
    s.add_argument(
        "--python",
        choices=["system", "none", "old"],
        default="system",
        help="system: Python 3.11; none: no python3; old: a python3 claiming 3.7.3",
    )
    s.add_argument(
        "--without-python", dest="python", action="store_const", const="none", help="--python none"
    )
    s.add_argument("--disk-limit", metavar="SIZE", help="writable disk size, e.g. 64M (tmpfs)")
    s.add_argument(
        "--model", help="board model in the device tree, e.g. 'Raspberry Pi 4 Model B Rev 1.5'"
    )
    s.add_argument("--ssh-config", metavar="FILE", help="also write the Host block into FILE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_start)

    t = esub.add_parser("stop", help="stop a device (the cached rootfs stays)")
    name_arg(t)
    t.add_argument("--all", action="store_true", help="every device")
    t.add_argument("--purge", action="store_true", help="also discard the device's disk")
    t.set_defaults(func=_cmd_stop)

    st = esub.add_parser("status", help="running or stopped, target, ports, pids")
    name_arg(st, None)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_status)

    sh = esub.add_parser("shape", help="limit a running device's bandwidth (tc tbf)")
    name_arg(sh)
    sh.add_argument("--rate", required=True, help="e.g. 10mbit, 512kbit; 'none' removes it")
    sh.set_defaults(func=_cmd_shape)

    b = esub.add_parser("build", help="build the cached root filesystem now")
    b.add_argument("--rootfs-cache", metavar="DIR")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(func=_cmd_build)
