"""Device operations against the host's own OpenSSH server on loopback (x86_64): host
keys, ssh config, probe, push/run/rollback, and the faults a push must survive."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _net import refused_port
from _sshd import CutProxy, Sshd, add_cut_files, reusable, start_sshd

import edgekit.devices as devices
from edgekit import read_manifest
from edgekit.devices import (
    ConnectError,
    Connection,
    DiskFullError,
    HostKeyMismatchError,
    PushOptions,
    RemoteCommandError,
    UnknownHostKeyError,
    deployments,
    push,
    rollback,
    run,
)
from edgekit.devices import predict as predict_on_device
from edgekit.devices import probe as probe_device
from edgekit.devices._push import push_one  # one target's push (no public name)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ssh_config_file(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tmp_path_factory.mktemp("cfg") / "config"
    cfg.write_text(
        f"Host hostdev\n  HostName 127.0.0.1\n  User root\n  Port {sshd.port}\n"
        f"  IdentityFile {sshd.key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
        f"Host jumped\n  HostName 127.0.0.1\n  User root\n  Port {sshd.port}\n"
        f"  IdentityFile {sshd.key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
        "  ProxyJump hostdev\n"
    )
    return cfg


@pytest.fixture(scope="module")
def device_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("device") / "edgekit"


def _opts(cfg: Path, root: Path, **kw: object) -> PushOptions:
    return PushOptions(root=str(root), ssh_config=str(cfg), verbose=False, **kw)  # type: ignore[arg-type]


def _fingerprint(pub: str) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", "-"],
        input=pub,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.split()[1]


def test_unknown_host_key_refused_then_accepted(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    c = Connection(sshd.target, known_hosts=kh, ssh_config=tmp_path / "none")
    c.target = type(c.target)(**{**c.target.__dict__, "identity_files": (str(sshd.key),)})
    with pytest.raises(UnknownHostKeyError) as err:
        c.run("true")
    assert _fingerprint(sshd.host_pub) in err.value.message
    assert "--accept-new-host-key" in (err.value.hint or "")
    assert not kh.exists()  # nothing recorded without consent
    c.accept_new_host_key = True
    assert c.run("echo hi").stdout == "hi\n"
    c.close()
    assert kh.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    c.accept_new_host_key = False
    assert c.run("echo again").stdout == "again\n"  # now known
    c.close()


def test_changed_host_key_refused(sshd: Sshd, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
        check=True,
        timeout=30,
    )
    other = (tmp_path / "k.pub").read_text().split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    c = Connection(sshd.target, known_hosts=kh, accept_new_host_key=True)
    with pytest.raises(HostKeyMismatchError, match=r"not the one"):
        c.run("true")


def test_unreachable_device() -> None:
    with refused_port() as port, pytest.raises(ConnectError, match="cannot reach") as err:
        Connection(f"root@127.0.0.1:{port}", connect_timeout=3).run("true")
    assert "Unable to connect to port" in err.value.message  # refused, not a timeout
    assert "sshd running" in (err.value.hint or "")  # what to check


def test_ssh_config_alias_and_proxyjump(sshd: Sshd, ssh_config_file: Path) -> None:
    with Connection("hostdev", ssh_config=ssh_config_file) as c:
        assert c.run("echo $USER").stdout.strip() == "root"
    with Connection("jumped", ssh_config=ssh_config_file) as c:
        assert c.target.proxy_jump == "hostdev"
        assert c.run("echo through").stdout == "through\n"
        assert c._jump is not None and c._jump.alive


def test_remote_command_failure_is_reported(ssh_config_file: Path) -> None:
    with Connection("hostdev", ssh_config=ssh_config_file) as c:
        res = c.run("echo oops >&2; exit 3", check=False)
        assert (res.exit_code, res.stderr) == (3, "oops\n")
        with pytest.raises(RemoteCommandError, match="exited with 3"):
            c.run("exit 3")


def test_probe_over_ssh(ssh_config_file: Path, device_root: Path) -> None:
    import platform

    info = probe_device("hostdev", _opts(ssh_config_file, device_root))
    assert info.arch == platform.machine() and info.python_ok and info.python_venv
    assert info.cores >= 1 and info.disk_free_mb > 0
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "device", "probe", "hostdev", "--json",
         "--ssh-config", str(ssh_config_file)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    probe = json.loads(out.stdout)
    assert probe["arch"] == platform.machine() and probe["profile"]["backend"] == "litert"


def test_push_run_rollback(
    ssh_config_file: Path, device_root: Path, digits_pkg: Path, digits_ptq_pkg: Path
) -> None:
    opts = _opts(ssh_config_file, device_root)
    first = push_one(digits_pkg, "hostdev", opts)
    assert first.ok, first.error
    assert first.changed and first.files_sent > 0 and first.smoke["backend"] == "litert"
    assert first.env_created and first.wheels_sent > 0
    # The same package again: nothing is sent, nothing switches.
    again = push_one(digits_pkg, "hostdev", opts)
    assert again.ok and not again.changed and again.files_sent == 0 and again.wheels_sent == 0
    # A second package becomes current; the environment is reused.
    second = push_one(digits_ptq_pkg, "hostdev", opts)
    assert second.ok and second.changed and not second.env_created and second.wheels_sent == 0
    assert second.previous is None  # a different package name has its own history
    out = predict_on_device("hostdev", _digits(8), options=opts)
    assert len(out["labels"]) == 8 and out["backend"] == "litert"
    # Run a command in the current deployment.
    res = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", "--ssh-config", str(ssh_config_file),
         "--root", str(device_root), "--quiet", "hostdev", "--", "python", "-c", _PRINT_NAME],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("digits-ptq")
    # The first package pushed again: unchanged, nothing sent, but it is what the user
    # pushed last, so commands that name no package use it again.
    back = push_one(digits_pkg, "hostdev", opts)
    assert back.ok and not back.changed and back.files_sent == 0, back.error
    name = run("hostdev", f"python -c {shlex.quote(_PRINT_NAME)}", options=opts, stream=False)
    assert name.ok and name.stdout.strip().endswith(read_manifest(digits_pkg).name), name


_PRINT_NAME = (
    "import os, edgekit.runtime as r; print(r.load(os.environ['EDGEKIT_PACKAGE']).manifest.name)"
)


def _digits(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    x = load_digits().images[:n]
    return (x * (255 / 16)).astype(np.uint8)[..., None]


def test_rollback_to_previous_version(
    ssh_config_file: Path,
    tmp_path: Path,
    digits_pkg: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path / "edgekit"
    opts = _opts(ssh_config_file, root)
    # Two versions of the same package: the second differs by one file.
    v2 = tmp_path / "v2" / digits_pkg.name
    shutil.copytree(digits_pkg, v2)
    _touch_report(v2)
    assert push_one(digits_pkg, "hostdev", opts).ok
    r2 = push_one(v2, "hostdev", opts)
    assert r2.ok and r2.files_sent == 2  # report.json and manifest.json; the rest is copied
    deps = deployments("hostdev", options=opts)
    assert [d.current for d in deps] == [False, True]
    back = rollback("hostdev", options=opts)
    assert back.deploy == deps[0].deploy
    assert [d.deploy for d in deployments("hostdev", options=opts) if d.current] == [back.deploy]
    with pytest.raises(devices.DeviceError, match=r"no version doesnotexist .*roll back to") as e:
        rollback("hostdev", options=opts, to="doesnotexist")
    assert "--to DEPLOY" in (e.value.hint or "")  # how to pick one of the kept versions


def _touch_report(pkg: Path) -> None:
    from edgekit._package import read_manifest, write_manifest

    rep = json.loads((pkg / "report.json").read_text())
    rep["note"] = "second build"
    (pkg / "report.json").write_text(json.dumps(rep))
    write_manifest(pkg, read_manifest(pkg, verify=False))


def test_dropped_link_keeps_previous_and_next_push_resumes(
    sshd: Sshd, ssh_config_file: Path, tmp_path: Path, digits_pkg: Path, digits_ptq_pkg: Path
) -> None:
    root = tmp_path / "edgekit"
    opts = _opts(ssh_config_file, root)
    assert push_one(digits_pkg, "hostdev", opts).ok
    v2 = tmp_path / "v2" / digits_pkg.name
    shutil.copytree(digits_pkg, v2)
    _touch_report(v2)
    # Two new files: the cut falls after the first arrived whole, inside the second.
    first, second = add_cut_files(v2, 1_000_000, 3_000_000)
    common_files, common_bytes = reusable(digits_pkg, v2)
    total = sum((v2 / rel).stat().st_size for rel in [*read_manifest(v2).files, "manifest.json"])
    fresh = total - common_bytes  # what a push after digits_pkg sends when nothing is cut
    before = [d.deploy for d in deployments("hostdev", options=opts) if d.current]

    proxy = CutProxy(("127.0.0.1", sshd.port), cut_after=2_500_000)
    kh = tmp_path / "kh"
    kh.write_text(sshd.known_line(port=proxy.port))
    target = f"root@127.0.0.1:{proxy.port}"
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host *\n  IdentityFile {sshd.key}\n")
    cut_opts = PushOptions(root=str(root), known_hosts=str(kh), ssh_config=str(cfg), verbose=False)
    res = push_one(v2, target, cut_opts)
    proxy.close()
    assert not res.ok and proxy.cuts == 1
    assert res.error is not None and "dropped" in res.error.message
    assert "still current" in res.error.message
    # The previous version is still current and still runs.
    assert [d.deploy for d in deployments("hostdev", options=opts) if d.current] == before
    assert len(predict_on_device("hostdev", _digits(3), options=opts)["labels"]) == 3
    # The next push completes, reusing what reached the device before the cut: the whole
    # first file, and the start of the second (appended to, then verified by its sha256).
    again = push_one(v2, "hostdev", opts)
    assert again.ok and again.changed, again.error
    assert again.files_reused > common_files
    assert again.bytes_reused > common_bytes + first.stat().st_size + 500_000
    assert again.bytes_sent < fresh - first.stat().st_size - 500_000
    assert (root / "digits" / "current" / "package" / second.name).read_bytes() == (
        second.read_bytes()
    )


def test_corrupt_file_on_device_is_refused_and_repaired(
    ssh_config_file: Path, tmp_path: Path, digits_pkg: Path
) -> None:
    root = tmp_path / "edgekit"
    opts = _opts(ssh_config_file, root)
    first = push_one(digits_pkg, "hostdev", opts)
    assert first.ok
    stage = next((root / "digits" / "current" / "package" / "tflite").glob("stage_1*.tflite"))
    data = bytearray(stage.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stage.write_bytes(bytes(data))
    with pytest.raises(RemoteCommandError, match="sha256"):
        predict_on_device("hostdev", _digits(2), options=opts)
    fixed = push_one(digits_pkg, "hostdev", opts)
    assert fixed.ok, fixed.error
    assert fixed.repaired == (f"tflite/{stage.name}",) and fixed.files_sent == 1
    assert len(predict_on_device("hostdev", _digits(2), options=opts)["labels"]) == 2


def test_full_disk_refused_before_anything_changes(
    ssh_config_file: Path, tmp_path: Path, digits_pkg: Path
) -> None:
    root = tmp_path / "small"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], timeout=60
    ).returncode
    if mounted != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        res = push_one(digits_pkg, "hostdev", _opts(ssh_config_file, root))
        assert not res.ok and isinstance(res.error, DiskFullError)
        assert "MB free" in res.error.message and "nothing was changed" in res.error.message
        # Only the push lock (a zero-byte file the next push reuses) was created.
        assert [p.name for p in root.iterdir()] in ([], [".lock"])
        assert not any(p.stat().st_size for p in root.iterdir())
    finally:
        subprocess.run(["umount", "--lazy", str(root)], timeout=60)


def test_fleet_push_reports_every_target(
    ssh_config_file: Path, tmp_path: Path, digits_pkg: Path
) -> None:
    opts = _opts(ssh_config_file, tmp_path / "edgekit")
    with refused_port() as port:
        dead = f"root@127.0.0.1:{port}"
        results = devices.push(digits_pkg, ["hostdev", dead, "jumped"], opts)
    assert list(results) == ["hostdev", dead, "jumped"]
    assert results["hostdev"].ok and results["jumped"].ok
    assert not results[dead].ok and "cannot reach" in results[dead].error.message  # type: ignore[union-attr]
    assert isinstance(results, devices.GroupResult) and not results.ok
    assert list(results.succeeded) == ["hostdev", "jumped"] and list(results.failed) == [dead]


def test_connect_options_alone_reach_the_device(sshd: Sshd, tmp_path: Path) -> None:
    """No ssh config: user, port, key file and known_hosts come from ConnectOptions, and
    the public facade's probe takes them through DeviceOptions."""
    kh = tmp_path / "kh"
    kh.write_text(sshd.known_line())
    conn = devices.ConnectOptions(
        ssh_config=str(tmp_path / "none"),
        known_hosts=str(kh),
        user="root",
        port=sshd.port,
        key_file=str(sshd.key),
    )
    with devices.connect("127.0.0.1", conn) as c:
        assert c.target.port == sshd.port and c.run("id -un").stdout.strip() == "root"
    info = devices.probe("127.0.0.1", devices.DeviceOptions(conn, root=str(tmp_path / "r")))
    assert info.arch == os.uname().machine and info.python_ok
    with refused_port() as port, pytest.raises(devices.ConnectError, match="cannot reach"):
        wrong = devices.ConnectOptions(
            ssh_config=str(tmp_path / "none"), known_hosts=str(kh), user="root", port=port
        )
        devices.probe("127.0.0.1", devices.DeviceOptions(wrong))


def test_cli_push_list_predict_rollback(
    ssh_config_file: Path, tmp_path: Path, digits_pkg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands a user types: push (two versions, then a dead target), device list,
    device predict, rollback."""
    from edgekit.cli import main

    root = tmp_path / "edgekit"
    ssh = ["--ssh-config", str(ssh_config_file), "--root", str(root), "--quiet"]
    v2 = tmp_path / "v2" / digits_pkg.name
    shutil.copytree(digits_pkg, v2)
    _touch_report(v2)
    assert main(["push", str(digits_pkg), "hostdev", "--json", *ssh]) == 0
    first = json.loads(capsys.readouterr().out)["hostdev"]
    assert first["ok"] and first["changed"] and first["bytes_sent"] > 0
    assert main(["push", str(v2), "hostdev", *ssh]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hostdev") and "now current" in out and "2 files" in out
    assert main(["device", "list", "hostdev", "--json", *ssh]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["current"] for r in rows] == [False, True] and rows[0]["deploy"] == first["deploy"]
    xs = tmp_path / "xs.npy"
    np.save(xs, _digits(4))
    assert main(["device", "predict", "hostdev", str(xs), "--json", *ssh]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(pred["labels"]) == 4 and pred["deploy"] == rows[1]["deploy"]
    assert main(["rollback", "hostdev", *ssh]) == 0
    assert f"-> {first['deploy']}" in capsys.readouterr().out
    assert main(["device", "list", "hostdev", *ssh]) == 0
    assert f"* {first['deploy']}" in capsys.readouterr().out
    with refused_port() as port:
        assert main(["push", str(digits_pkg), f"root@127.0.0.1:{port}", *ssh]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "cannot reach" in out and "hint:" in out


# -- a hostile package never writes outside its release folder ----------------------------

_SKIP = ("edgekit/.incoming", "edgekit/.lock")  # the content-addressed upload area, the lock


@pytest.fixture(scope="module")
def trust_dev(
    ssh_config_file: Path, digits_pkg: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A device root ``DEV/edgekit`` with digits pushed (its environment made once), and a
    folder ``DEV/outside`` beside it that no push may touch."""
    dev = tmp_path_factory.mktemp("trust-dev")
    outside = dev / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched")
    assert push_one(digits_pkg, "hostdev", _opts(ssh_config_file, dev / "edgekit")).ok
    return dev / "edgekit", outside


def test_crafted_packages_are_refused_before_anything_is_sent(
    ssh_config_file: Path, tmp_path: Path, digits_pkg: Path, trust_dev: tuple[Path, Path]
) -> None:
    from _trust import changes, snapshot, with_escaping_key, with_name, with_symlink

    from edgekit import PackageError

    root, _ = trust_dev
    crafted = [
        with_escaping_key(digits_pkg, tmp_path / "k1" / "k2" / "k3" / "k4" / "k.edgepkg"),
        with_symlink(digits_pkg, tmp_path / "s.edgepkg", tmp_path / "secret.txt"),
        with_name(digits_pkg, tmp_path / "n.edgepkg", "../../x"),
    ]
    before = snapshot(root.parent)
    for pkg in crafted:
        with pytest.raises(PackageError, match=r"symlink|not a plain relative|package name"):
            push_one(pkg, "hostdev", _opts(ssh_config_file, root))
        with pytest.raises(PackageError):
            push(pkg, ["hostdev"], _opts(ssh_config_file, root))
    assert changes(before, snapshot(root.parent)) == []


def test_device_rechecks_what_a_lax_host_sends(
    ssh_config_file: Path,
    tmp_path: Path,
    digits_pkg: Path,
    trust_dev: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from _trust import changes, lax_host, snapshot, with_escaping_key, with_name

    root, outside = trust_dev
    opts = _opts(ssh_config_file, root)
    key_pkg = with_escaping_key(digits_pkg, tmp_path / "k1" / "k2" / "k3" / "k4" / "k.edgepkg")
    name_pkg = with_name(digits_pkg, tmp_path / "n.edgepkg", "../../x")
    before = snapshot(root.parent, skip=_SKIP)
    lax_host(monkeypatch)  # the host no longer checks: only the device stands in the way
    for pkg, why in ((key_pkg, "not a plain relative path"), (name_pkg, "package name")):
        res = push_one(pkg, "hostdev", opts)
        assert not res.ok and res.error is not None
        assert "device refused" in res.error.message and why in res.error.message
        assert "still current" in res.error.message
    monkeypatch.undo()
    assert changes(before, snapshot(root.parent, skip=_SKIP)) == []
    assert not (root / ".." / ".." / "x").exists()
    assert not (outside / "pwned.txt").exists()
    # The device still works: the pushed package is still current.
    assert len(predict_on_device("hostdev", _digits(2), options=opts)["labels"]) == 2


def test_device_refuses_to_write_through_a_symlink_it_finds(
    ssh_config_file: Path, tmp_path: Path, digits_pkg: Path, trust_dev: tuple[Path, Path]
) -> None:
    from _trust import changes, snapshot

    from edgekit.devices._push import package_release_id

    root, outside = trust_dev
    opts = _opts(ssh_config_file, root)
    v2 = tmp_path / "v2" / digits_pkg.name
    shutil.copytree(digits_pkg, v2)
    _touch_report(v2)
    # Something on the device planted a link where the next release's files will go.
    partial = root / "digits" / "releases" / f"{package_release_id(v2)}.partial"
    partial.mkdir(parents=True)
    (partial / "tflite").symlink_to(outside)
    before = snapshot(root.parent, skip=_SKIP)
    res = push_one(v2, "hostdev", opts)
    assert not res.ok and res.error is not None
    assert "device refused" in res.error.message and "symlink" in res.error.message
    assert changes(before, snapshot(root.parent, skip=_SKIP)) == []
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    # With the link gone, the same push goes through and the upload area is cleaned up.
    (partial / "tflite").unlink()
    again = push_one(v2, "hostdev", opts)
    assert again.ok and again.changed, again.error
    assert not (root / ".incoming").exists()
