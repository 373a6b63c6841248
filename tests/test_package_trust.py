"""A hostile or clumsy manifest, or output folder, never escapes, crashes or stalls edgekit.

Property tests (hypothesis) of ``Manifest.from_dict``, and the output-folder, ``--name`` and
signal handling of ``convert``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit import PackageError
from edgekit._package import Manifest

_DIGEST = "ab" * 32

VALID: dict[str, Any] = {
    "schema_version": 1,
    "name": "tiny",
    "labels": ["a", "b", "c"],
    "input": {"shape": [8, 8, 1], "layout": "NHWC", "scale": 1 / 255, "offset": 0.0},
    "stages": [
        {
            "index": 0,
            "files": {"tflite": "tflite/stage_0.tflite"},
            "input": {
                "name": "input",
                "shape": [-1, 8, 8, 1],
                "dtype": "int8",
                "quant": {"scale": 0.02, "zero_point": -128, "dtype": "int8"},
            },
            "logits": {"name": "ek_logits", "shape": [-1, 3], "dtype": "int8", "quant": None},
            "features": None,
            "macs": 1000,
        }
    ],
    "exits": [
        {"index": 0, "stage": 0, "layer": "final", "macs": 1000, "macs_fraction": 1.0,
         "accuracy": {"float": 0.9}}
    ],
    "full": {"tflite": "tflite/full.tflite"},
    "quantization": "ptq",
    "onnx_activation_type": None,
    "tools": {"python": "3.11"},
    "split_points": [1],
    "files": {"tflite/stage_0.tflite": _DIGEST, "tflite/full.tflite": _DIGEST},
}  # fmt: skip


def test_the_valid_manifest_reads() -> None:
    m = Manifest.from_dict(VALID)
    assert m.name == "tiny" and m.stages[0].input.quant is not None


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(VALID)
    node: Any = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("schema_version",), -5, "schema_version"),
        (("schema_version",), True, "schema_version"),
        (("schema_version",), 0, "schema_version"),
        (("input", "scale"), 0, r"input\.scale"),
        (("input", "scale"), -1.0, r"input\.scale"),
        (("input", "scale"), float("inf"), r"input\.scale"),
        (("input", "scale"), float("nan"), r"input\.scale"),
        (("input", "scale"), 10**400, r"input\.scale"),
        (("input", "shape"), [100000, 100000, 100000], r"input\.shape"),
        (("input", "shape"), [0, 8, 1], r"input\.shape\[0\]"),
        (("input", "shape"), [8.5, 8, 1], r"input\.shape\[0\]"),
        (("input", "shape"), [], r"input\.shape"),
        (("input", "shape"), [1] * 9, r"input\.shape"),
        (("input",), [], "input"),
        (("stages",), [], "stages"),
        (("stages", 0, "input", "shape"), [-1, 2**40, 1, 1], r"stages\[0\]\.input\.shape"),
        (("stages", 0, "input", "quant", "scale"), 0.0, r"stages\[0\]\.input\.quant\.scale"),
        (("stages", 0, "input", "quant", "zero_point"), 500, r"zero_point"),
        (("stages", 0, "index"), 3, r"stages\[0\]\.index"),
        (("exits", 0, "stage"), 7, r"exits\[0\]\.stage"),
        (("exits", 0, "macs_fraction"), "1", r"exits\[0\]\.macs_fraction"),
        (("labels",), "abc", "labels"),
        (("labels",), [1, 2, 3], r"labels\[0\]"),
        (("labels",), ["x" * 10_000], r"labels\[0\]"),
        (("split_points",), [99], r"split_points\[0\]"),
        (("tools",), {"python": ["deep"]}, "tools"),
        (("files", "tflite/full.tflite"), "nothex", r"files\["),
        (("name",), 5, "package name"),
    ],
)
def test_malformed_values_name_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    with pytest.raises(PackageError, match=field):
        Manifest.from_dict(_with(path, value))


def test_deep_nesting_is_a_package_error(tmp_path: Path) -> None:
    from edgekit import read_manifest

    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PackageError):
        read_manifest(tmp_path)
    deep: Any = "x"
    for _ in range(5000):
        deep = {"k": deep}
    with pytest.raises(PackageError):
        Manifest.from_dict(_with(("labels",), deep))


# -- property: arbitrary JSON never raises anything but PackageError -------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=30,
)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


_ALL_PATHS = _paths(VALID)


def _check(d: Any) -> None:
    try:
        m = Manifest.from_dict(d)
    except PackageError:
        return
    assert isinstance(m, Manifest)
    json.dumps(m.to_dict())  # what it read can be written back


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_arbitrary_json_gives_package_error_or_manifest(d: Any) -> None:
    _check(d)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_ALL_PATHS), _json)
def test_any_field_replaced_by_anything(path: tuple[Any, ...], value: Any) -> None:
    _check(_with(path, value))


# -- convert: the output folder, the name, signals ------------------------------------------

_NO_DATA = "/nonexistent/dataset.npz"  # fails in the data step, right after the checks


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_force_refuses_a_folder_that_is_not_a_package(tmp_path: Path) -> None:
    from edgekit import OutputExistsError
    from edgekit.converters import convert

    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.tex").write_text("years of work")
    (home / "manifest.json").write_text('{"not": "ours"}')
    before = _tree(home)
    # Refused before anything else: the missing dataset is never even looked at.
    with pytest.raises(OutputExistsError, match="not an edge package") as err:
        convert(_NO_DATA, home, force=True, verbose=False)
    assert "nothing was touched" in err.value.message
    assert "pick a new folder for --out" in (err.value.hint or "")  # what to do instead
    assert _tree(home) == before


def test_force_refuses_out_dot_in_a_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekit import OutputExistsError
    from edgekit.converters import convert

    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputExistsError, match="not an edge package"):
        convert(_NO_DATA, ".", force=True, verbose=False)
    with pytest.raises(OutputExistsError, match="already exists"):
        convert(_NO_DATA, ".", verbose=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_force_accepts_an_empty_folder_or_a_package(tmp_path: Path) -> None:
    from edgekit import DatasetError
    from edgekit.converters import convert

    empty = tmp_path / "empty.edgepkg"
    empty.mkdir()
    with pytest.raises(DatasetError):  # past the destination check
        convert(_NO_DATA, empty, force=True, verbose=False)
    pkg = tmp_path / "old.edgepkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_text(json.dumps({**VALID, "schema_version": 1}))
    with pytest.raises(DatasetError):
        convert(_NO_DATA, pkg, force=True, verbose=False)
    assert (pkg / "manifest.json").exists()  # a failed convert leaves the old package alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.edgepkg", "old.edgepkg"]


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "x" * 65])
def test_convert_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    from edgekit.converters import convert

    with pytest.raises(PackageError, match="package name"):
        convert(_NO_DATA, tmp_path / "p.edgepkg", name=name, verbose=False)
    with pytest.raises(PackageError, match="taken from --out"):
        convert(_NO_DATA, tmp_path / "my pkg.edgepkg", verbose=False)
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(60)
    return proc.pid


def test_stale_partial_folders_are_removed(tmp_path: Path) -> None:
    import os

    from edgekit import DatasetError
    from edgekit.converters import convert

    out = tmp_path / "p.edgepkg"
    dead = tmp_path / f".p.edgepkg.partial-{_dead_pid()}"
    live = tmp_path / f".p.edgepkg.partial-{os.getppid()}"  # a running process (pytest's parent)
    other = tmp_path / f".q.edgepkg.partial-{_dead_pid()}"  # another package's: not ours to judge
    work = tmp_path / f".p.edgepkg.work-{_dead_pid()}"  # a killed run's trained model
    for p in (dead, live, other, work):
        (p / "tflite").mkdir(parents=True)
        (p / "tflite" / "stage_0.tflite").write_bytes(b"half")
    with pytest.raises(DatasetError):
        convert(_NO_DATA, out, verbose=False)
    assert not dead.exists() and live.exists() and other.exists()
    assert not work.exists()
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_removes_the_partial_folder(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from _wait import wait_for

    out = tmp_path / "p.edgepkg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "convert", "--dataset", "digits", "--out", str(out),
         "--fast", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    partial = tmp_path / f".p.edgepkg.partial-{proc.pid}"
    maps = Path(f"/proc/{proc.pid}/maps")

    def into_the_work() -> bool:
        # the partial folder exists (the SIGTERM handler is in place) and TensorFlow is loaded
        assert proc.poll() is None, proc.communicate(timeout=60)[1][-2000:]
        return partial.exists() and "tensorflow" in maps.read_text()

    try:
        wait_for(into_the_work, 120, "the convert to start its work")
    except AssertionError:
        proc.kill()
        proc.wait(60)
        raise
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not partial.exists(), err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- the device's own check (``_agent place``, run here as the device runs it) -------------


def _stage_upload(root: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> str:
    """Put files in ``root/.incoming`` under their sha256, as the host's push does."""
    import hashlib

    inc = root / ".incoming"
    inc.mkdir(parents=True, exist_ok=True)
    for data in files.values():
        (inc / hashlib.sha256(data).hexdigest()).write_bytes(data)
    manifest = {**manifest, "files": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (inc / digest).write_bytes(raw)
    return digest


def _place(root: Path, digest: str) -> dict[str, Any]:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "edgekit.devices._agent", "place", digest, "--root", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    assert (res.returncode == 0) == ("error" not in out)
    return out


_FILES = {"tflite/stage_0.tflite": b"stage bytes", "tflite/full.tflite": b"full bytes"}


def test_device_places_a_good_package(tmp_path: Path) -> None:
    root = tmp_path / "edgekit"
    digest = _stage_upload(root, _FILES, VALID)
    out = _place(root, digest)
    assert out["ok"] and out["placed"] == 3
    rel = root / "tiny" / "releases" / f"{digest[:12]}.partial"
    assert (rel / "tflite" / "stage_0.tflite").read_bytes() == b"stage bytes"
    assert not list((root / ".incoming").iterdir())  # what was used is cleaned up


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"name": "../../x"}, "package name"),
        ({"name": "a/b"}, "package name"),
        ({"files": {"l/" + "../" * 5 + "outside/pwned.txt": b"x"}}, "not a plain relative path"),
        ({"files": {"/tmp/pwned.txt": b"x"}}, "not a plain relative path"),
    ],
)
def test_device_refuses_a_crafted_manifest(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    from _trust import changes, snapshot

    root = tmp_path / "edgekit"
    files = {**_FILES, **change.get("files", {})}
    manifest = {**VALID, **{k: v for k, v in change.items() if k != "files"}}
    digest = _stage_upload(root, files, manifest)
    before = snapshot(tmp_path)
    out = _place(root, digest)
    assert "device refused" in out["error"] and why in out["error"]
    assert changes(before, snapshot(tmp_path)) == []


def test_device_refuses_a_manifest_that_is_not_what_the_host_named(tmp_path: Path) -> None:
    root = tmp_path / "edgekit"
    digest = _stage_upload(root, _FILES, VALID)
    (root / ".incoming" / digest).write_text(json.dumps({**VALID, "name": "other"}))
    assert "wrong sha256" in _place(root, digest)["error"]
    assert "not a sha256" in _place(root, "../../etc/passwd")["error"]


@pytest.mark.parametrize("where", ["tiny", "tiny/releases", "REL", "REL/tflite"])
def test_device_refuses_to_write_through_a_symlink(tmp_path: Path, where: str) -> None:
    from _trust import changes, snapshot

    root = tmp_path / "edgekit"
    outside = tmp_path / "outside"
    outside.mkdir()
    digest = _stage_upload(root, _FILES, VALID)
    link = root / where.replace("REL", f"tiny/releases/{digest[:12]}.partial")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    before = snapshot(tmp_path)
    out = _place(root, digest)
    assert "device refused" in out["error"] and "symlink" in out["error"]
    assert changes(before, snapshot(tmp_path)) == []
    assert list(outside.iterdir()) == []


# -- every caller goes through the one rule -------------------------------------------------


def test_load_and_verify_refuse_a_path_outside_the_package(tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys

    import edgekit

    pkg = tmp_path / "p.edgepkg"
    (pkg / "tflite").mkdir(parents=True)
    for rel, data in _FILES.items():
        (pkg / rel).write_bytes(data)
    outside = tmp_path / "other.tflite"
    outside.write_bytes(b"stage bytes")
    bad = copy.deepcopy(VALID)
    bad["files"] = {k: hashlib.sha256(v).hexdigest() for k, v in _FILES.items()}
    bad["stages"][0]["files"]["tflite"] = str(outside)  # absolute, to another file
    (pkg / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(PackageError, match=r"stages\[0\]\.files\['tflite'\]"):
        edgekit.load(pkg)
    res = subprocess.run(
        [sys.executable, "-m", "edgekit", "verify", str(pkg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "stages[0].files['tflite']" in res.stderr


@pytest.mark.parametrize("name", ["../../x", "a/b"])
def test_device_operations_refuse_a_bad_name_before_connecting(name: str) -> None:
    from edgekit.devices._ops import deployments, rollback, run_on_device
    from edgekit.devices._push import PushOptions

    opts = PushOptions(verbose=False)
    unreachable = "root@127.0.0.1:1"  # never contacted: the name is refused first
    for op in (
        lambda: rollback(unreachable, package=name, options=opts),
        lambda: deployments(unreachable, package=name, options=opts),
        lambda: run_on_device(unreachable, "true", package=name, options=opts),
    ):
        with pytest.raises(PackageError, match="package name"):
            op()
