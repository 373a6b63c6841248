"""The on-device runtime must stay light: numpy and one interpreter, nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "tensorflow",
    "tf_keras",
    "keras",
    "tensorflow_model_optimization",
    "tf2onnx",
    "paramiko",
    "matplotlib",
    "sklearn",
    "onnx",
)


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_importing_runtime_loads_nothing_heavy() -> None:
    loaded = _modules_after("import edgekit.runtime")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"edgekit.runtime imported heavy modules: {heavy[:10]}"


def test_importing_edgekit_and_package_format_is_light() -> None:
    loaded = _modules_after("import edgekit, edgekit._package, edgekit.data")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, heavy[:10]


def test_the_check_sees_heavy_imports() -> None:
    # Guard against a check that cannot fail: importing the converters does pull TF in.
    loaded = _modules_after(
        "import edgekit.converters; import edgekit.converters._keras as k; k.keras()"
    )
    assert "tensorflow" in loaded
