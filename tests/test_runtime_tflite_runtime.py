"""The tflite-runtime backend, in its own environment (tflite-runtime 2.14 needs numpy<2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def numpy1_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with numpy<2, tflite-runtime and edgekit (no other deps)."""
    if shutil.which("pip") is None and not (Path(sys.executable).parent / "pip").exists():
        pytest.skip("pip is not available to build the numpy-1 environment")
    root = tmp_path_factory.mktemp("numpy1-env")
    venv.EnvBuilder(with_pip=True).create(root)
    py = root / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    res = subprocess.run(
        [*pip, "numpy<2", "tflite-runtime==2.14.0", "pillow"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0:
        pytest.skip(f"could not install tflite-runtime here: {res.stderr.strip()[-300:]}")
    # The package itself, without its dependencies: as on a device.
    res = subprocess.run(
        [*pip, "--no-deps", str(REPO)], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return py


def test_tflite_runtime_backend_runs_the_package(numpy1_python: Path, digits_pkg: Path) -> None:
    code = f"""
import json, sys
import numpy as np
import edgekit
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
out = {{}}
for policy in ("full", "threshold:0.9", "bandit"):
    with edgekit.load({str(digits_pkg)!r}, backend="tflite", policy=policy) as m:
        preds = m.predict_batch(x)
        out[policy] = [p.label for p in preds]
        out["backend"] = m.backend
out["numpy"] = np.__version__
out["heavy"] = sorted(k for k in sys.modules if k.split(".")[0] in
                      ("tensorflow", "ai_edge_litert", "onnxruntime", "paramiko"))
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [str(numpy1_python), "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["backend"] == "tflite"
    assert out["numpy"].startswith("1.")
    assert out["heavy"] == []
    # The same inputs through LiteRT in this environment give the same labels.
    import numpy as np

    import edgekit

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
    with edgekit.load(digits_pkg, backend="litert", policy="full") as m:
        assert [p.label for p in m.predict_batch(x)] == out["full"]
