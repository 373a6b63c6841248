"""The acceptance path on the virtual arm64 Raspberry Pi: probe, push the Fashion-MNIST
package, predict on the device with LiteRT, bench, two devices at once, and the faults
(dropped link, corrupt file, no or old Python, full disk, unknown host key)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _net import refused_port
from _sshd import CutProxy, add_cut_files, reusable

from edgekit import read_manifest
from edgekit.devices import (
    Connection,
    DiskFullError,
    PushOptions,
    PushResult,
    RemoteCommandError,
    UnknownHostKeyError,
    UnsupportedDeviceError,
    VirtualDevice,
    bench,
    deployments,
    predict,
    probe,
    push,
)


def _opts(cfg: Path, **kw: object) -> PushOptions:
    return PushOptions(ssh_config=str(cfg), verbose=False, **kw)  # type: ignore[arg-type]


def push_one(package: Path, target: str, options: PushOptions) -> PushResult:
    """One target through the public ``push``: its result map's one entry."""
    return push(package, [target], options)[target]


@pytest.fixture(scope="module")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    from edgekit.data import load_dataset

    ds = load_dataset("fashion-mnist")
    return ds.x_test[:64], ds.y_test[:64]


@pytest.fixture(scope="module")
def pushed(ssh_config_file: Path, fmnist_fast_pkg: Path) -> dict[str, object]:
    res = push_one(fmnist_fast_pkg, "pi0", _opts(ssh_config_file))
    assert res.ok, res.error
    return res.to_json()


def test_probe_reports_aarch64(ssh_config_file: Path, virtual_device: VirtualDevice) -> None:
    info = probe("pi0", _opts(ssh_config_file))
    assert info.arch == "aarch64" and info.python.startswith("3.11") and info.python_ok
    assert info.emulated and info.profile().backend == "litert"
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "device", "probe", "pi0", "--json",
         "--ssh-config", str(ssh_config_file)],
        capture_output=True, text=True, check=True, timeout=600
    )  # fmt: skip
    assert json.loads(out.stdout)["arch"] == "aarch64"


def test_push_then_predict_on_device_with_litert(
    pushed: dict[str, object],
    ssh_config_file: Path,
    fmnist_fast_pkg: Path,
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    assert pushed["changed"] and pushed["smoke"]["backend"] == "litert"  # type: ignore[index]
    assert pushed["device"]["arch"] == "aarch64"  # type: ignore[index]
    x, y = fmnist_test
    out = predict("pi0", x, options=_opts(ssh_config_file))
    assert out["backend"] == "litert" and len(out["labels"]) == len(x)
    # The same int8 model on the host gives the same answers.
    import edgekit

    with edgekit.load(fmnist_fast_pkg, backend="litert", policy="full") as m:
        here = [m.predict(xi).label for xi in x]
    agree = np.mean(np.array(out["labels"]) == np.array(here))
    assert agree >= 0.98, agree
    assert np.mean(np.array(out["labels"]) == y) > 0.6


def test_bench_on_device_brings_back_json(
    pushed: dict[str, object],
    ssh_config_file: Path,
    fmnist_fast_pkg: Path,
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    res = bench(fmnist_fast_pkg, "pi0", fmnist_test[0][:40], options=_opts(ssh_config_file))
    assert res["device"]["arch"] == "aarch64" and res["backend"] == "litert"
    assert len(res["stage_latency_ms"]) == len(json.loads(
        (fmnist_fast_pkg / "manifest.json").read_text())["stages"])  # fmt: skip
    assert set(res["policies"]) == {"full", "threshold:0.9", "bandit"}
    assert all(p["mean_ms"] > 0 for p in res["policies"].values())
    assert res["peak_rss_mb"] > 0 and res["inputs"] == 40
    # And through the CLI, as JSON on stdout.
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "bench", str(fmnist_fast_pkg), "pi0", "--json",
         "-n", "20", "--ssh-config", str(ssh_config_file), "--quiet"],
        capture_output=True, text=True, timeout=600
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["device"]["arch"] == "aarch64"


def test_two_devices_at_once(
    pushed: dict[str, object], ssh_config_file: Path, fmnist_fast_pkg: Path
) -> None:
    with refused_port() as port:
        dead = f"root@127.0.0.1:{port}"
        results = push(fmnist_fast_pkg, ["pi0", "pi1", dead], _opts(ssh_config_file))
    assert list(results) == ["pi0", "pi1", dead]
    assert results["pi0"].ok and results["pi0"].files_sent == 0  # the package is there already
    assert results["pi1"].ok and results["pi1"].changed, results["pi1"].error
    assert not results[dead].ok and results[dead].error is not None
    assert results["pi0"].deploy == results["pi1"].deploy


def _variant(pkg: Path, dest: Path, extra_bytes: int = 0) -> Path:
    from edgekit._package import write_manifest  # internal: rewrites a package's manifest

    out = dest / pkg.name
    shutil.copytree(pkg, out)
    rep = json.loads((out / "report.json").read_text())
    rep["note"] = f"variant {dest.name}"
    (out / "report.json").write_text(json.dumps(rep))
    if extra_bytes:
        rng = np.random.default_rng(1)
        (out / "extra.bin").write_bytes(rng.integers(0, 255, extra_bytes, np.uint8).tobytes())
    write_manifest(out, read_manifest(out, verify=False))
    return out


def test_dropped_link_mid_push(
    pushed: dict[str, object],
    ssh_config_file: Path,
    virtual_device: VirtualDevice,
    device_key: Path,
    fmnist_fast_pkg: Path,
    tmp_path: Path,
) -> None:
    v2 = _variant(fmnist_fast_pkg, tmp_path)
    # Two new files: the cut falls after the first arrived whole, inside the second.
    first, second = add_cut_files(v2, 700_000, 4_000_000)
    common_files, common_bytes = reusable(fmnist_fast_pkg, v2)
    total = sum((v2 / rel).stat().st_size for rel in [*read_manifest(v2).files, "manifest.json"])
    fresh = total - common_bytes  # what a push after fmnist_fast_pkg sends when nothing is cut
    before = [d.deploy for d in deployments("pi0", options=_opts(ssh_config_file)) if d.current]
    proxy = CutProxy((virtual_device.host, virtual_device.port), cut_after=3_200_000)
    kh = tmp_path / "known_hosts"
    kind, b64 = virtual_device.known_hosts_line.split()[1:3]
    kh.write_text(f"[127.0.0.1]:{proxy.port} {kind} {b64}\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Host *\n  IdentityFile {device_key}\n  User root\n")
    res = push_one(
        v2,
        f"127.0.0.1:{proxy.port}",
        PushOptions(ssh_config=str(cfg), known_hosts=str(kh), verbose=False),
    )
    proxy.close()
    assert not res.ok and proxy.cuts >= 1
    assert res.error is not None and "dropped" in res.error.message
    assert "still current" in res.error.message
    opts = _opts(ssh_config_file)
    assert [d.deploy for d in deployments("pi0", options=opts) if d.current] == before
    assert len(predict("pi0", np.zeros((2, 28, 28, 1), np.uint8), options=opts)["labels"]) == 2
    again = push_one(v2, "pi0", opts)
    assert again.ok and again.changed, again.error
    # What arrived before the cut is reused: the first file, and the start of the second
    # (less than was sent before the cut: sshd drops what its sftp-server had not written).
    assert again.files_reused > common_files
    assert again.bytes_reused > common_bytes + first.stat().st_size + 200_000
    assert again.bytes_sent < fresh - first.stat().st_size - 200_000
    name = read_manifest(v2).name
    with Connection("pi0", ssh_config=ssh_config_file) as c:
        got = c.run(f"sha256sum /opt/edgekit/{name}/current/package/{second.name}").stdout
    assert got.split()[0] == read_manifest(v2).files[second.name]


def test_corrupt_file_on_device(
    pushed: dict[str, object], ssh_config_file: Path, fmnist_fast_pkg: Path
) -> None:
    opts = _opts(ssh_config_file)
    assert push_one(fmnist_fast_pkg, "pi0", opts).ok  # make it current again
    rel = "tflite/stage_0.tflite"
    with Connection("pi0", ssh_config=ssh_config_file) as c:
        name = json.loads((fmnist_fast_pkg / "manifest.json").read_text())["name"]
        f = f"/opt/edgekit/{name}/current/package/{rel}"
        c.run(f"printf 'XXXX' | dd of={f} bs=1 seek=200 conv=notrunc status=none")
    with pytest.raises(RemoteCommandError, match="sha256"):
        predict("pi0", np.zeros((1, 28, 28, 1), np.uint8), options=opts)
    fixed = push_one(fmnist_fast_pkg, "pi0", opts)
    # Sent again, or copied from another release on the device that holds the same bytes.
    assert fixed.ok and fixed.repaired == (rel,) and fixed.files_sent <= 1, fixed.error
    assert len(predict("pi0", np.zeros((1, 28, 28, 1), np.uint8), options=opts)["labels"]) == 1


def _target_opts(dev: VirtualDevice, key: Path, tmp_path: Path) -> tuple[str, PushOptions]:
    kh = tmp_path / "kh"
    kh.write_text(dev.known_hosts_line + "\n")
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host *\n  IdentityFile {key}\n")
    return dev.target, PushOptions(ssh_config=str(cfg), known_hosts=str(kh), verbose=False)


def test_device_without_python(
    virtual_device_nopython: VirtualDevice, device_key: Path, fmnist_fast_pkg: Path, tmp_path: Path
) -> None:
    target, opts = _target_opts(virtual_device_nopython, device_key, tmp_path)
    res = push_one(fmnist_fast_pkg, target, opts)
    assert not res.ok and isinstance(res.error, UnsupportedDeviceError)
    assert "no python3" in res.error.message and "3.9" in res.error.message
    assert "apt install python3" in (res.error.hint or "")


def test_device_with_old_python(
    virtual_device_oldpython: VirtualDevice, device_key: Path, fmnist_fast_pkg: Path, tmp_path: Path
) -> None:
    target, opts = _target_opts(virtual_device_oldpython, device_key, tmp_path)
    res = push_one(fmnist_fast_pkg, target, opts)
    assert not res.ok and isinstance(res.error, UnsupportedDeviceError)
    assert "Python 3.7.3" in res.error.message


def test_full_disk(
    virtual_device_tinydisk: VirtualDevice, device_key: Path, fmnist_fast_pkg: Path, tmp_path: Path
) -> None:
    target, opts = _target_opts(virtual_device_tinydisk, device_key, tmp_path)
    res = push_one(fmnist_fast_pkg, target, opts)
    assert not res.ok and isinstance(res.error, DiskFullError)
    assert "MB free" in res.error.message
    with Connection(target, ssh_config=opts.ssh_config, known_hosts=opts.known_hosts) as c:
        assert c.run("ls /opt/edgekit 2>/dev/null | wc -l").stdout.strip() == "0"


def test_unknown_host_key_of_device(
    virtual_device: VirtualDevice, device_key: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host *\n  IdentityFile {device_key}\n")
    c = Connection(virtual_device.target, ssh_config=cfg, known_hosts=tmp_path / "empty")
    with pytest.raises(UnknownHostKeyError) as err:
        c.run("true")
    assert virtual_device.host_key_fingerprint in err.value.message


# -- a hostile package never writes outside its release folder ----------------------------

_SKIP = ("edgekit/.incoming", "edgekit/.lock")  # under the device's /opt


def test_crafted_packages_never_leave_the_release_folder(
    pushed: dict[str, object],
    ssh_config_file: Path,
    fmnist_fast_pkg: Path,
    virtual_device: VirtualDevice,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from _trust import changes, lax_host, snapshot, with_escaping_key, with_name, with_symlink

    from edgekit import PackageError

    opts = _opts(ssh_config_file)
    assert push_one(fmnist_fast_pkg, "pi0", opts).ok  # make it current again
    opt = virtual_device.rootfs / "opt"
    top = sorted(p.name for p in virtual_device.rootfs.iterdir())
    key_pkg = with_escaping_key(fmnist_fast_pkg, tmp_path / "k1" / "k2" / "k3" / "k4" / "k.edgepkg")
    name_pkg = with_name(fmnist_fast_pkg, tmp_path / "n.edgepkg", "../../x")
    link_pkg = with_symlink(fmnist_fast_pkg, tmp_path / "s.edgepkg", tmp_path / "secret.txt")
    before = snapshot(opt, skip=_SKIP)
    # The host refuses all three before it connects.
    for pkg in (key_pkg, name_pkg, link_pkg):
        with pytest.raises(PackageError):
            push_one(pkg, "pi0", opts)
    # With the host's checks off, the device refuses the two it can see.
    lax_host(monkeypatch)
    for pkg, why in ((key_pkg, "not a plain relative path"), (name_pkg, "package name")):
        res = push_one(pkg, "pi0", opts)
        assert not res.ok and res.error is not None
        assert "device refused" in res.error.message and why in res.error.message
    monkeypatch.undo()
    assert changes(before, snapshot(opt, skip=_SKIP)) == []
    assert sorted(p.name for p in virtual_device.rootfs.iterdir()) == top  # no /x
    assert not (opt / "outside").exists()
    assert len(predict("pi0", np.zeros((1, 28, 28, 1), np.uint8), options=opts)["labels"]) == 1


def test_device_refuses_a_symlink_in_the_release_folder(
    pushed: dict[str, object],
    ssh_config_file: Path,
    fmnist_fast_pkg: Path,
    virtual_device: VirtualDevice,
    tmp_path: Path,
) -> None:
    from _trust import changes, snapshot

    from edgekit.devices._push import package_release_id  # internal: names the release folder

    opts = _opts(ssh_config_file)
    v2 = tmp_path / "v2" / fmnist_fast_pkg.name
    shutil.copytree(fmnist_fast_pkg, v2)
    rep = json.loads((v2 / "report.json").read_text())
    rep["note"] = "symlink test"
    (v2 / "report.json").write_text(json.dumps(rep))
    from edgekit._package import write_manifest  # internal: rewrites a package's manifest

    name = write_manifest(v2, read_manifest(v2, verify=False)).name
    opt = virtual_device.rootfs / "opt"
    (opt / "outside").mkdir(exist_ok=True)
    partial = opt / "edgekit" / name / "releases" / f"{package_release_id(v2)}.partial"
    partial.mkdir(parents=True)
    (partial / "tflite").symlink_to("/opt/outside")  # as the device resolves it
    try:
        before = snapshot(opt, skip=_SKIP)
        res = push_one(v2, "pi0", opts)
        assert not res.ok and res.error is not None
        assert "device refused" in res.error.message and "symlink" in res.error.message
        assert changes(before, snapshot(opt, skip=_SKIP)) == []
        assert list((opt / "outside").iterdir()) == []
    finally:
        shutil.rmtree(partial)
        shutil.rmtree(opt / "outside")
