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
