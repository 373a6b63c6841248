"""The virtual arm64 device: a real sshd under qemu-user, reached with the real OpenSSH client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _devices_fixtures import TINY_DISK, device_name, require_emulator, start_device, stop_device

from edgekit.cli import main
from edgekit.devices import EmulatorError, HostNotSupported, VirtualDevice
from edgekit.devices import emulate as emu  # its _helpers are unit-tested here too

needs_ssh_client = pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client")


def ssh(dev: VirtualDevice, command: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        dev.ssh_argv(command), capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(dev: VirtualDevice, command: str) -> str:
    res = ssh(dev, command)
    assert res.returncode == 0, f"{command!r} on {dev.name}: {res.returncode} {res.stderr}"
    return res.stdout


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


# ---------------------------------------------------------------------------------------------
# Unit level: no device needed


def test_non_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HostNotSupported, match="needs root") as exc:
        emu.start("pi0")
    assert "sudo" in (exc.value.hint or "")
    for call in (lambda: emu.stop("pi0"), lambda: emu.shape("pi0", "1mbit"), emu.build_rootfs):
        with pytest.raises(HostNotSupported, match="needs root"):
            call()
    assert "needs root" in (emu.host_problem() or "")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root+setpriv")
def test_cli_as_nobody_gets_a_clear_error(tmp_path: Path) -> None:
    """The real CLI run by an unprivileged user: exit 2, what is wrong and what to do."""
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
         "-m", "edgekit", "device", "emulate", "start", "--name", "nobody0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "edgekit: error: the virtual device needs root" in res.stderr
    assert "hint: run it as root" in res.stderr


def test_bad_options_are_explained() -> None:
    with pytest.raises(EmulatorError, match="invalid device name"):
        emu.start("Pi_0!")
    with pytest.raises(EmulatorError, match="invalid device name"):
        emu.status("a-very-long-device-name")
    with pytest.raises(EmulatorError, match="invalid rate"):
        emu._rate_bits("fast")
    with pytest.raises(EmulatorError, match="invalid size"):
        emu._size_bytes("lots")
    with pytest.raises(EmulatorError, match="too small"):
        emu._size_bytes("1k")
    with pytest.raises(EmulatorError, match="python="):
        emu.start("pi0", python="2.7")
    with pytest.raises(EmulatorError, match="network namespace"):
        emu.start("pi0", loopback=True, rate="1mbit")
    assert emu._rate_bits("10mbit") == 10_000_000
    assert emu._rate_bits("1mbps") == 8_000_000
    assert emu._size_bytes("48M") == 48 << 20


def test_missing_key_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EmulatorError, match="no SSH public key") as exc:
        emu._resolve_key(tmp_path / "nokey.pub", generate=False)
    assert "--key-generate" in (exc.value.hint or "")
    pub, priv = emu._resolve_key(tmp_path / "k", generate=True)
    assert pub == tmp_path / "k.pub" and priv == tmp_path / "k"
    assert pub.read_text().startswith("ssh-ed25519 ")
    # the private key path works as --key too; a file that is not a key is refused
    assert emu._resolve_key(priv, generate=False) == (pub, priv)
    bad = tmp_path / "bad.pub"
    bad.write_text("hello\n")
    with pytest.raises(EmulatorError, match="not an OpenSSH public key"):
        emu._resolve_key(bad, generate=False)


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pub, _ = emu._resolve_key(tmp_path / "k", generate=True)
    want = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()[1]
    assert emu._fingerprint(pub.read_text()) == want


def _fake_device(tmp_path: Path, **kw: Any) -> VirtualDevice:
    fields: dict[str, Any] = {
        "name": "pi0", "host": "10.77.1.2", "port": 22, "user": "root",
        "key_path": tmp_path / "id", "public_key_path": tmp_path / "id.pub",
        "known_hosts_path": tmp_path / "kh", "known_hosts_line": "10.77.1.2 ssh-ed25519 AAAA",
        "host_key_fingerprint": "SHA256:x", "netns": "ek-pi0", "veth": "ekh-pi0",
        "host_address": "10.77.1.1", "rootfs": tmp_path / "root", "state_dir": tmp_path,
        "sshd_pid": 1,
    }  # fmt: skip
    fields.update(kw)
    return VirtualDevice(**fields)


def test_ssh_config_block_is_written_and_replaced(tmp_path: Path) -> None:
    cfg = tmp_path / "ssh" / "config"
    cfg.parent.mkdir()
    cfg.write_text("Host *\n    ServerAliveInterval 30\n")
    dev = _fake_device(tmp_path)
    assert dev.target == "root@10.77.1.2"
    dev.write_ssh_config(cfg)
    moved = _fake_device(tmp_path, host="127.0.0.1", port=2222, netns=None, veth=None)
    assert moved.target == "root@127.0.0.1:2222"
    moved.write_ssh_config(cfg)
    text = cfg.read_text()
    assert text.count("Host pi0") == 1 and "HostName 127.0.0.1" in text and "Port 2222" in text
    assert text.index("Host pi0") < text.index("Host *")  # first match wins in ssh
    assert "StrictHostKeyChecking yes" in text and f"IdentityFile {tmp_path / 'id'}" in text
    assert cfg.stat().st_mode & 0o777 == 0o600
    dev.write_ssh_config(cfg, alias="other")
    assert "Host other" in cfg.read_text() and "Host pi0" in cfg.read_text()
    assert VirtualDevice.from_dict(json.loads(json.dumps(dev.to_dict()))) == dev


# ---------------------------------------------------------------------------------------------
# The session devices


@needs_ssh_client
def test_ssh_reaches_an_arm64_device_with_python311(virtual_device: VirtualDevice) -> None:
    dev = virtual_device
    assert dev.target == f"root@{dev.host}" and dev.host.endswith(".2") and dev.port == 22
    t0 = time.monotonic()
    assert ok(dev, "uname -m").strip() == "aarch64"
    print(f"ssh uname -m round trip: {time.monotonic() - t0:.2f} s")
    assert ok(dev, "python3 -V").strip().startswith("Python 3.11")
    assert ok(dev, "hostname").strip() == dev.name
    assert ok(dev, "cat /etc/debian_version").startswith("12")
    assert "qemu-user aarch64" in ok(dev, "cat /etc/edgekit-virtual-device")
    assert ok(dev, "test -e /sys/firmware/devicetree || echo none").strip() == "none"
    # the device's host key is the one the client checked, and the fingerprint start printed
    kh = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(dev.known_hosts_path)],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    assert dev.host_key_fingerprint in kh
    assert dev.known_hosts_line == dev.known_hosts_path.read_text().strip()


@needs_ssh_client
def test_an_unknown_host_key_is_refused(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = [a.replace(str(virtual_device.known_hosts_path), str(empty))
            for a in virtual_device.ssh_argv("true")]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 255 and "Host key verification failed" in res.stderr


@needs_ssh_client
def test_ssh_config_aliases(
    ssh_config_file: Path, virtual_device: VirtualDevice, virtual_device2: VirtualDevice
) -> None:
    for alias in ("pi0", "pi1"):
        res = subprocess.run(
            ["ssh", "-F", str(ssh_config_file), "-o", "BatchMode=yes", alias, "uname -m; hostname"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        arch, host = res.stdout.split()
        assert arch == "aarch64"
        assert host == (virtual_device.name if alias == "pi0" else virtual_device2.name)


@needs_ssh_client
def test_the_device_reaches_no_package_index(virtual_device: VirtualDevice) -> None:
    dev = virtual_device
    probe = (
        "import socket, sys\n"
        "for addr in (('pypi.org', 443), ('151.101.0.223', 443), ('deb.debian.org', 80)):\n"
        "    try:\n"
        "        socket.create_connection(addr, 3).close()\n"
        "        print('REACHED', addr)\n"
        "    except OSError as e:\n"
        "        print('failed', addr, type(e).__name__)\n"
    )
    out = ok(dev, f"python3 -c {_q(probe)}")
    assert "REACHED" not in out and out.count("failed") == 3, out
    routes = [line.split() for line in ok(dev, "cat /proc/net/route").splitlines()[1:]]
    assert routes and all(r[1] != "00000000" for r in routes), routes  # no default route
    assert ok(dev, "test -e /etc/resolv.conf || echo none; test -e /etc/pip.conf || echo none") == (
        "none\nnone\n"
    )
    # but it reaches the host (for split computing: a server on the host's veth address)
    with socket.socket() as srv:
        srv.bind((dev.host_address or "", 0))
        srv.listen(1)
        addr = (dev.host_address, srv.getsockname()[1])
        code = f"import socket; socket.create_connection({addr!r}, 5); print(1)"
        assert ok(dev, f"python3 -c {_q(code)}").strip() == "1"


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


@needs_ssh_client
def test_venv_can_bring_pip(virtual_device: VirtualDevice) -> None:
    """python3-venv carries pip for ensurepip: a venv gets pip offline (no python3-pip needed).

    Only checked, not run: `python3 -m venv` with pip takes about 2 minutes under emulation.
    """
    out = ok(
        virtual_device,
        "python3 -m venv --without-pip /tmp/v && /tmp/v/bin/python -c "
        "'import ensurepip; print(ensurepip.version())'; rm -rf /tmp/v",
    )
    assert out.strip().split(".")[0].isdigit() and int(out.split(".")[0]) >= 23, out


@needs_ssh_client
def test_two_devices_have_separate_disks(
    virtual_device: VirtualDevice, virtual_device2: VirtualDevice
) -> None:
    a, b = virtual_device, virtual_device2
    assert a.host != b.host and a.netns != b.netns and a.veth != b.veth
    assert a.host_key_fingerprint != b.host_key_fingerprint
    ok(a, "echo from-a > /root/marker && mkdir -p /opt/edgekit && echo x > /opt/edgekit/f")
    assert ok(b, "test -e /root/marker && echo yes || echo no").strip() == "no"
    lower = Path(json.loads((a.state_dir / "device.json").read_text())["lower"])
    assert not (lower / "root/marker").exists() and (a.rootfs / "root/marker").exists()
    # a file the device corrupts is corrupt only there (and restored: `a` is shared)
    ok(a, "cp /usr/lib/os-release /root/os-release.saved")
    try:
        ok(a, "echo garbage > /usr/lib/os-release")
        assert (
            "Debian" in ok(b, "cat /usr/lib/os-release")
            and "Debian" in (lower / "usr/lib/os-release").read_text()
        )
    finally:
        ok(a, "cp /root/os-release.saved /usr/lib/os-release && rm -f /root/os-release.saved")
    assert "Debian" in ok(a, "cat /usr/lib/os-release")


def test_status(virtual_device: VirtualDevice) -> None:
    st = emu.status(virtual_device.name)
    assert st.running and st.ready and st.device == virtual_device
    assert virtual_device.sshd_pid in st.pids
    d = st.to_dict()
    assert d["state"] == "running" and d["device"]["veth"] == virtual_device.veth
    assert d["device"]["target"] == virtual_device.target and d["device"]["arch"] == "aarch64"
    assert virtual_device.name in [s.name for s in emu.list_devices()]


def test_cli_status_and_idempotent_start(
    virtual_device: VirtualDevice, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["device", "emulate", "status", "--name", virtual_device.name, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["state"] == "running" and d["device"]["host_key_fingerprint"].startswith("SHA256:")
    assert main(["device", "emulate", "status"]) == 0
    assert f"{virtual_device.name}: running  {virtual_device.target}" in capsys.readouterr().out
    key = str(virtual_device.public_key_path)
    assert main(["device", "emulate", "start", "--name", virtual_device.name, "--key", key]) == 0
    out = capsys.readouterr().out
    assert "is already running" in out and f"Host {virtual_device.name}" in out
    assert f"HostName {virtual_device.host}" in out and "StrictHostKeyChecking yes" in out
    assert virtual_device.known_hosts_line in out
    assert emu.status(virtual_device.name).device == virtual_device  # untouched


@needs_ssh_client
def test_bandwidth_is_shaped_with_tbf(virtual_device2: VirtualDevice, tmp_path: Path) -> None:
    dev = virtual_device2
    emu.shape(dev.name, "2mbit")
    try:
        qd = subprocess.run(["tc", "qdisc", "show", "dev", dev.veth or ""], capture_output=True,
                            text=True, check=True, timeout=600).stdout  # fmt: skip
        assert "tbf" in qd and "rate 2Mbit" in qd, qd
        inside = subprocess.run(["tc", "-n", dev.netns or "", "qdisc", "show", "dev", "eth0"],
                                capture_output=True, text=True, check=True,
                                timeout=600).stdout  # fmt: skip
        assert "rate 2Mbit" in inside
        shaped = emu.status(dev.name).device
        assert shaped is not None and shaped.rate == "2mbit"
        # 768 KiB at 2 Mbit/s takes >= 3.1 s each way; unshaped it takes a fraction of that
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(768 << 10))
        for argv, stdin in (
            (dev.ssh_argv("cat > /dev/null"), blob.open("rb")),
            (dev.ssh_argv("head -c 786432 /dev/urandom"), subprocess.DEVNULL),
        ):
            t0 = time.monotonic()
            res = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=120)
            elapsed = time.monotonic() - t0
            assert res.returncode == 0, res.stderr
            assert elapsed >= 0.9 * (768 * 1024 * 8) / 2e6, f"{elapsed:.2f} s: not shaped"
    finally:
        emu.shape(dev.name, None)
    qd = subprocess.run(["tc", "qdisc", "show", "dev", dev.veth or ""], capture_output=True,
                        text=True, timeout=600).stdout  # fmt: skip
    assert "tbf" not in qd


# ---------------------------------------------------------------------------------------------
# Devices of their own: stop/start, loopback, the fault devices


@needs_ssh_client
def test_stop_cleans_up_and_restart_keeps_the_disk(device_key: Path) -> None:
    name = device_name("lf")
    t0 = time.monotonic()
    board = "Raspberry Pi 4 Model B Rev 1.5"
    dev = start_device(name, device_key, rate="50mbit", model=board)
    print(f"start (cached rootfs): {time.monotonic() - t0:.2f} s")
    try:
        assert ok(dev, "cat /sys/firmware/devicetree/base/model") == board + "\0"
        ok(dev, "echo kept > /root/kept; (nohup sleep 1000 >/dev/null 2>&1 &) ; true")
        pids = emu.status(name, probe=False).pids
        assert len(pids) >= 2  # sshd and the sleep a session left behind
        lower = Path(json.loads((dev.state_dir / "device.json").read_text())["lower"])
        t0 = time.monotonic()
        assert emu.stop(name) is True
        print(f"stop: {time.monotonic() - t0:.2f} s")
        # (killed processes reparented to a PID 1 that does not reap stay as zombies: not alive)
        assert not any(emu._pid_alive(p) for p in pids)
        assert str(dev.rootfs) not in _mounts() and str(dev.state_dir) not in _mounts()
        assert not Path(f"/run/netns/{dev.netns}").exists()
        assert not Path(f"/sys/class/net/{dev.veth}").exists()
        assert emu._rootfs_ready(lower) and not (lower / "root/kept").exists()
        st = emu.status(name)
        assert not st.running and st.device is not None and st.pids == ()
        assert emu.stop(name) is False  # stopping twice is fine
        again = emu.start(name, key=device_key)
        assert again.host == dev.host and again.host_key_fingerprint == dev.host_key_fingerprint
        assert ok(again, "cat /root/kept").strip() == "kept"
        assert again.rate is None
    finally:
        stop_device(name)
    assert not Path(dev.state_dir).exists()
    assert emu._rootfs_ready(lower)


@needs_ssh_client
def test_loopback_mode(device_key: Path) -> None:
    require_emulator(loopback=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = device_name("lo")
    dev = start_device(name, device_key, loopback=True, port=port)
    try:
        assert dev.target == f"root@127.0.0.1:{port}" and dev.netns is None and dev.veth is None
        assert dev.known_hosts_line.startswith(f"[127.0.0.1]:{port} ssh-ed25519 ")
        assert ok(dev, "uname -m").strip() == "aarch64"
        out = ok(dev, "python3 -c " + _q(
            "import socket\ntry:\n    socket.getaddrinfo('pypi.org', 443)\n    print('RESOLVED')\n"
            "except OSError as e:\n    print('failed', e)\n"))  # fmt: skip
        assert out.startswith("failed"), out
        with pytest.raises(EmulatorError, match="loopback"):
            emu.shape(name, "1mbit")
    finally:
        stop_device(name)
    assert port_free(port)


def port_free(port: int) -> bool:
    return emu._port_free(port)


@needs_ssh_client
def test_device_without_python(virtual_device_nopython: VirtualDevice) -> None:
    dev = virtual_device_nopython
    assert dev.python == "none" and dev.python_version is None
    res = ssh(dev, "python3 -V")
    assert res.returncode == 127 and "not found" in res.stderr
    assert ok(dev, "ls /usr/bin/ | grep -c '^python' || true").strip() == "0"
    assert ok(dev, "uname -m").strip() == "aarch64"


@needs_ssh_client
def test_device_with_old_python(virtual_device_oldpython: VirtualDevice) -> None:
    dev = virtual_device_oldpython
    assert ok(dev, "python3 -V").strip() == "Python 3.7.3"
    out = ok(dev, "python3 -c 'import platform, sys; print(sys.version_info[:3], "
                  "platform.python_version(), sys.version_info >= (3, 9))'")  # fmt: skip
    assert out.strip() == "(3, 7, 3) 3.7.3 False"
    assert ssh(dev, "python3.11 -V").returncode == 127


@needs_ssh_client
def test_tiny_disk_fills_up(virtual_device_tinydisk: VirtualDevice) -> None:
    dev = virtual_device_tinydisk
    assert dev.disk_limit == TINY_DISK and dev.disk_limit_path == "/"
    size_kb = int(ok(dev, "df -k --output=size /opt/edgekit | tail -1"))
    assert size_kb == emu._size_bytes(TINY_DISK) // 1024
    res = ssh(dev, "mkdir -p /opt/edgekit && head -c 64M /dev/zero > /opt/edgekit/fill")
    assert res.returncode != 0 and "No space left on device" in res.stderr
    ok(dev, "rm /opt/edgekit/fill")
    assert ok(dev, "echo fine > /opt/edgekit/small && cat /opt/edgekit/small").strip() == "fine"


def test_conflicting_settings_need_a_purge(device_key: Path) -> None:
    require_emulator()
    name = device_name("cf")
    start_device(name, device_key)
    try:
        emu.stop(name)
        with pytest.raises(EmulatorError, match="other settings") as exc:
            emu.start(name, key=device_key, python="none")
        assert "--purge" in (exc.value.hint or "")
    finally:
        stop_device(name)


# ---------------------------------------------------------------------------------------------
# The shaped link alone (root and network namespaces; no rootfs, no device)


def _link_names(tag: str) -> tuple[str, str, str, int]:
    n = os.getpid() % 10000
    return f"ekt{tag}{n}", f"ekth{tag}{n}", f"ektd{tag}{n}", 16 + os.getpid() % 200


def test_shaped_link_up_shape_exec_down() -> None:
    require_emulator()
    ns, host_if, dev_if, net = _link_names("a")
    link = emu.ShapedLink(ns, host_if=host_if, dev_if=dev_if, host_ip=f"10.215.{net}.1",
                          dev_ip=f"10.215.{net}.2", latency="400ms")  # fmt: skip
    with socket.socket() as srv, link:
        assert link.exists and Path(f"/sys/class/net/{host_if}").exists()
        inside = subprocess.run(link.argv("ip", "-4", "-o", "addr", "show", "dev", dev_if),
                                capture_output=True, text=True, check=True,
                                timeout=600).stdout  # fmt: skip
        assert f"10.215.{net}.2/30" in inside
        # the namespace reaches the host over the pair, and only the pair
        srv.bind((f"10.215.{net}.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = f"import socket; socket.create_connection(('10.215.{net}.1', {port}), 5).send(b'hi')"
        res = subprocess.run(link.argv(sys.executable, "-c", code), capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr
        conn, peer = srv.accept()
        with conn:
            assert peer[0] == f"10.215.{net}.2" and conn.recv(2) == b"hi"
        assert link.shape("2.5mbit", burst="32kbit") == "2.5mbit"
        host_q = link.qdisc() or ""
        assert "tbf" in host_q and "rate 2500Kbit" in host_q and "lat 400ms" in host_q, host_q
        dev_q = subprocess.run(link.argv("tc", "qdisc", "show", "dev", dev_if),
                               capture_output=True, text=True, check=True,
                                timeout=600).stdout  # fmt: skip
        assert "rate 2500Kbit" in dev_q and "burst 4Kb" in dev_q, dev_q
        link.shape("1mbit")  # replaces; the default bucket is 16 KiB
        assert "rate 1Mbit" in (link.qdisc() or "") and "burst 16Kb" in (link.qdisc() or "")
        assert link.shape(None) is None and "tbf" not in (link.qdisc() or "")
    assert not link.exists and not Path(f"/sys/class/net/{host_if}").exists()
    link.down()  # twice is fine
    with pytest.raises(EmulatorError, match="invalid rate"):
        link.shape("fast")


def test_shaped_link_that_fails_to_come_up_leaves_nothing() -> None:
    require_emulator()
    ns, host_if, dev_if, _ = _link_names("b")
    link = emu.ShapedLink(ns, host_if=host_if, dev_if=dev_if, host_ip="10.215.1.1",
                          dev_ip="not-an-address")  # fmt: skip
    with pytest.raises(EmulatorError, match="not-an-address"):
        link.up()
    assert not link.exists and not Path(f"/sys/class/net/{host_if}").exists()
    with pytest.raises(EmulatorError, match="no addresses"):
        emu.ShapedLink(ns, host_if=host_if).up()
    assert not link.exists


def test_cli_shape_status_build_as_typed(
    virtual_device2: VirtualDevice, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgekit device emulate shape|status|build` succeed as a user types them."""
    dev = virtual_device2

    def qdisc() -> str:
        return subprocess.run(["tc", "qdisc", "show", "dev", dev.veth or ""], capture_output=True,
                              text=True, check=True, timeout=60).stdout  # fmt: skip

    try:
        assert main(["device", "emulate", "shape", "--name", dev.name, "--rate", "3mbit"]) == 0
        out = capsys.readouterr().out.strip()
        assert out == f"virtual device {dev.name}: bandwidth limited to 3mbit both ways on " + (
            dev.veth or ""
        )
        assert "tbf" in qdisc() and "rate 3Mbit" in qdisc()
        assert main(["device", "emulate", "status", "--name", dev.name]) == 0
        line = capsys.readouterr().out
        assert line.startswith(f"{dev.name}: running ") and ", shaped 3mbit" in line, line
    finally:
        assert main(["device", "emulate", "shape", "--name", dev.name, "--rate", "none"]) == 0
    assert capsys.readouterr().out.strip() == f"virtual device {dev.name}: bandwidth unshaped"
    assert "tbf" not in qdisc()
    # With the rootfs cached, build answers with it and builds nothing.
    lower = Path(json.loads((dev.state_dir / "device.json").read_text())["lower"])
    stamp = max(p.stat().st_mtime_ns for p in lower.parent.iterdir())
    assert main(["device", "emulate", "build"]) == 0
    assert Path(capsys.readouterr().out.strip()) == lower
    assert max(p.stat().st_mtime_ns for p in lower.parent.iterdir()) == stamp
