"""Device tooling without a device: targets, probe parsing, profiles, wheels, the
on-device layout scripts (run by a real shell on a temporary folder)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from edgekit.devices import UnsupportedDeviceError, parse_target
from edgekit.devices._probe import PROBE_SCRIPT, parse_probe  # internal: probe's parsing alone
from edgekit.devices._remote import Layout  # internal: the on-device layout scripts
from edgekit.devices._wheelhouse import (  # internal: the wheels a push builds
    edgekit_wheel,
    platform_tags,
)


def test_target_forms(tmp_path: Path) -> None:
    t = parse_target("pi@10.0.0.5:2222", ssh_config=tmp_path / "none")
    assert (t.user, t.host, t.port) == ("pi", "10.0.0.5", 2222)
    assert t.known_hosts_key == "[10.0.0.5]:2222"
    t = parse_target("root@[fe80::1]:22", ssh_config=tmp_path / "none")
    assert (t.host, t.port, t.known_hosts_key) == ("fe80::1", 22, "fe80::1")
    with pytest.raises(ValueError, match="not an SSH target"):
        parse_target("a b", ssh_config=tmp_path / "none")


def test_target_from_ssh_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host pi0\n  HostName 10.77.0.2\n  User pi\n  Port 2200\n"
        "  IdentityFile ~/keys/pi\n  ProxyJump gw\n  UserKnownHostsFile /tmp/kh\n"
        "  ConnectTimeout 3\n"
        "Host gw\n  HostName gw.example\n  User ops\n"
    )
    t = parse_target("pi0", ssh_config=cfg)
    assert (t.host, t.user, t.port, t.proxy_jump) == ("10.77.0.2", "pi", 2200, "gw")
    assert t.identity_files[0].endswith("/keys/pi") and "~" not in t.identity_files[0]
    assert t.known_hosts == ("/tmp/kh",) and t.connect_timeout == 3
    # What the user writes wins over the config.
    t = parse_target("root@pi0:22", ssh_config=cfg)
    assert (t.user, t.port, t.host) == ("root", 22, "10.77.0.2")


def test_probe_script_runs_here() -> None:
    out = subprocess.run(
        ["sh", "-s", "/nonexistent/edgekit"],
        input=PROBE_SCRIPT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    info = parse_probe("local", out.stdout)
    import platform

    assert info.arch == platform.machine()
    assert info.python_ok and info.cores >= 1 and info.mem_total_mb > 0
    assert info.disk_path == "/" and info.disk_free_mb > 0
    assert info.glibc_version >= (2, 17)


@pytest.mark.parametrize(
    ("text", "kind", "backend", "fmt"),
    [
        ("arch=aarch64\npython=3.11.2\nglibc=2.36\nboard=Raspberry Pi 4 Model B Rev 1.4\ncores=4",
         "rpi", "litert", "tflite"),
        ("arch=armv7l\npython=3.11.2\nglibc=2.36\nboard=Raspberry Pi 3 Model B\ncores=4",
         "rpi", "tflite", "tflite"),
        ("arch=aarch64\npython=3.8.10\nglibc=2.31\njetson=# R35 (release), REVISION: 4.1\n"
         "cuda=11.4.315\ntensorrt=8.5.2", "jetson", "onnxruntime", "onnx"),
        ("arch=aarch64\npython=3.9.2\nglibc=2.31\nedgetpu_pcie=/dev/apex_0\n"
         "libedgetpu=/usr/lib/aarch64-linux-gnu/libedgetpu.so.1", "coral", "edgetpu", "tflite"),
        ("arch=x86_64\npython=3.11.7\nglibc=2.36\ncores=2", "generic", "litert", "tflite"),
    ],
)  # fmt: skip
def test_profiles(text: str, kind: str, backend: str, fmt: str) -> None:
    info = parse_probe("dev", text)
    prof = info.profile()
    assert (info.kind, prof.backend, prof.format) == (kind, backend, fmt)
    assert prof.threads >= 1
    if kind == "jetson":
        assert info.accelerators["jetson"]["tensorrt"] == "8.5.2"
        assert not info.python_ok  # 3.8: too old, and the push says so


def test_python_too_old_or_missing() -> None:
    assert not parse_probe("d", "arch=aarch64\npython=3.7.3").python_ok
    assert not parse_probe("d", "arch=aarch64\n").python_ok
    assert parse_probe("d", "arch=aarch64\npython=3.9.0").python_ok


def test_platform_tags() -> None:
    tags = platform_tags("aarch64", (2, 28))
    assert tags[0] == "manylinux_2_28_aarch64" and "manylinux_2_27_aarch64" in tags
    assert tags[-1] == "manylinux2014_aarch64" and "manylinux_2_29_aarch64" not in tags
    assert platform_tags("arm64", (2, 17))[0] == "manylinux_2_17_aarch64"
    with pytest.raises(UnsupportedDeviceError, match="glibc"):
        platform_tags("aarch64", (2, 12))


def test_edgekit_wheel_is_reproducible_and_complete(tmp_path: Path) -> None:
    a = edgekit_wheel(tmp_path / "a")
    b = edgekit_wheel(tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as z:
        names = set(z.namelist())
        assert z.testzip() is None
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    for mod in (
        "edgekit/_package.py",
        "edgekit/runtime/_model.py",
        "edgekit/runtime/backends/litert.py",
        "edgekit/devices/_agent.py",
    ):
        assert mod in names
    assert not any(n.startswith("edgekit/converters") for n in names)
    assert "Requires-Dist: numpy" in meta and "+g" in a.name


def _sh(script: str) -> str:
    return subprocess.run(
        ["sh", "-c", script], check=True, capture_output=True, text=True, timeout=600
    ).stdout


def test_switch_and_prune_scripts(tmp_path: Path) -> None:
    lay = Layout(str(tmp_path), "pkg")
    for i in range(5):
        d = f"r{i}-env{i % 2}"
        _sh(
            f"mkdir -p {lay.releases}/r{i} {lay.deploys}/{d} {tmp_path}/envs/env{i % 2}; "
            f"ln -s ../../releases/r{i} {lay.deploys}/{d}/package"
        )
        _sh(lay.switch_script(d))
        assert Path(lay.current).resolve() == Path(lay.deploys, d).resolve()
    assert (tmp_path / "current").resolve() == Path(lay.deploys, "r4-env0").resolve()
    _sh(f"mkdir -p {tmp_path}/envs/stale {lay.releases}/r9.partial")
    _sh(lay.prune_script())
    assert sorted(p.name for p in Path(lay.deploys).iterdir()) == ["r2-env0", "r3-env1", "r4-env0"]
    assert sorted(p.name for p in Path(lay.releases).iterdir()) == ["r2", "r3", "r4", "r9.partial"]
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == ["env0", "env1"]
    state = _sh(lay.state_script())
    assert "current=r4-env0" in state and "history=r0-env0" in state


def test_every_profile_backend_is_a_runtime_backend() -> None:
    from edgekit.runtime import backends

    for text in (
        "arch=aarch64",
        "arch=armv7l",
        "arch=aarch64\njetson=R35",
        "edgetpu_usb=1a6e:089a",
    ):
        assert parse_probe("d", text).profile().backend in backends.NAMES


# -- ConnectOptions and the emulator's commands, without a device -------------------------


def test_connect_options_override_the_target(tmp_path: Path) -> None:
    from edgekit.devices import ConnectOptions, PushOptions

    cfg = tmp_path / "config"
    cfg.write_text("Host pi0\n  HostName 10.0.0.5\n  User pi\n  Port 2200\n")
    plain = ConnectOptions(ssh_config=str(cfg)).target("pi0")
    assert (plain.host, plain.user, plain.port) == ("10.0.0.5", "pi", 2200)
    assert plain.identity_files == ()
    t = ConnectOptions(
        ssh_config=str(cfg), user="root", port=22, key_file="~/k", connect_timeout=3
    ).target("pi0")
    assert (t.host, t.user, t.port, t.connect_timeout) == ("10.0.0.5", "root", 22, 3)
    assert t.identity_files == (str(Path.home() / "k"),)
    with pytest.raises(ValueError, match="not a TCP port"):
        ConnectOptions(port=70000)
    with pytest.raises(ValueError, match="connect_timeout"):
        ConnectOptions(connect_timeout=0)
    # The flat SSH fields of PushOptions still work; `connect` wins when given.
    old = PushOptions(ssh_config=str(cfg), known_hosts="kh", password="pw", root="/r")
    assert old.connection.ssh_config == str(cfg) and old.connection.password == "pw"
    assert "pw" not in repr(old.connection)
    dev = old.device_options()
    assert dev.root == "/r" and dev.connect == old.connection
    assert PushOptions(connect=ConnectOptions(user="u")).connection.user == "u"


def test_cli_emulate_stop_shape_build_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`device emulate stop|shape|build` as typed, on a state folder of this test's own."""
    import os

    from _sshd import need

    from edgekit.cli import main

    need(os.geteuid() == 0, "the emulator's commands need root")
    monkeypatch.setenv("EDGEKIT_EMULATOR_STATE", str(tmp_path / "state"))
    name = f"u{os.getpid() % 100000}"  # no device of anyone's has this name
    assert main(["device", "emulate", "stop", "--name", name]) == 0
    assert capsys.readouterr().out.strip() == f"virtual device {name} was not running"
    assert main(["device", "emulate", "shape", "--name", name, "--rate", "10mbit"]) == 2
    err = capsys.readouterr().err
    assert f"virtual device {name} is not running" in err
    assert f"edgekit device emulate start --name {name}" in err
    with pytest.raises(SystemExit) as exc:
        main(["device", "emulate", "shape", "--name", name])
    assert exc.value.code == 2 and "--rate" in capsys.readouterr().err
    assert main(["device", "emulate", "stop", "--name", "../etc"]) == 2
    assert "../etc" in capsys.readouterr().err
    bad = tmp_path / "a b"
    assert main(["device", "emulate", "build", "--rootfs-cache", str(bad)]) == 2
    assert "contains" in capsys.readouterr().err and not bad.exists()
