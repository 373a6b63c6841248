"""The code pushed to devices runs on Python 3.9 (Raspberry Pi OS bullseye, older Jetsons).

The host SDK needs 3.11 (``requires-python``), but the wheel a push builds for a device carries
only edgekit's own modules, and the probe accepts a device with Python 3.9. No 3.9 interpreter
is on the CI machine, so this reads the sources that wheel ships: they must parse as 3.9 and
use none of the 3.10+ features that fail only at run time.
"""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest

_NEW_KEYWORDS = {("zip", "strict"), ("dataclass", "slots"), ("dataclass", "kw_only")}
_STDLIB_310 = {
    "itertools": {"pairwise", "batched"},
    "typing": {"TypeAlias", "ParamSpec", "Self", "TypeGuard", "Concatenate"},
    "enum": {"StrEnum"},
    "datetime": {"UTC"},
}
_NEW_MODULES = {"tomllib"}
_TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        anns = [getattr(node, "annotation", None), getattr(node, "returns", None)]
        for ann in anns:
            if ann is not None:
                out.update(id(n) for n in ast.walk(ann))
    return out


def _is_type_like(side: ast.expr) -> bool:
    return (isinstance(side, ast.Name) and side.id in _TYPE_NAMES) or (
        isinstance(side, ast.Constant) and side.value is None
    )


def problems_39(name: str, text: str) -> list[str]:
    """What in one source file would break on Python 3.9."""
    try:
        tree = ast.parse(text, filename=name, feature_version=(3, 9))
    except SyntaxError as e:
        return [f"{name}:{e.lineno}: not Python 3.9 syntax ({e.msg})"]
    found: list[str] = []
    annotations = _annotation_nodes(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and id(node) not in annotations
            and (_is_type_like(node.left) or _is_type_like(node.right))
        ):
            found.append(f"{name}:{node.lineno}: `X | Y` of types evaluated at run time (3.10+)")
        elif isinstance(node, ast.Call):
            fn = node.func
            fname = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")
            for kw in node.keywords:
                if (fname, kw.arg) in _NEW_KEYWORDS:
                    found.append(f"{name}:{node.lineno}: {fname}({kw.arg}=...) is 3.10+")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in _NEW_MODULES:
                    found.append(f"{name}:{node.lineno}: module {a.name} is 3.11+")
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if module.split(".")[0] in _NEW_MODULES:
                found.append(f"{name}:{node.lineno}: module {module} is 3.11+")
            for a in node.names:
                if a.name in _STDLIB_310.get(module, ()):
                    found.append(f"{name}:{node.lineno}: {module}.{a.name} is 3.10+")
    return found


def test_device_wheel_sources_run_on_python_39(tmp_path: Path) -> None:
    from edgekit.devices._wheelhouse import edgekit_wheel  # internal: the wheel a push sends

    with zipfile.ZipFile(edgekit_wheel(tmp_path)) as z:
        sources = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
    assert "edgekit/runtime/_model.py" in sources, sorted(sources)
    problems = [p for name, text in sorted(sources.items()) for p in problems_39(name, text)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        "x = int | None\n",
        "ok = isinstance(v, int | float)\n",
        "for a, b in zip(p, q, strict=True):\n    pass\n",
        "match x:\n    case 1:\n        pass\n",
        "from itertools import pairwise\n",
        "import tomllib\n",
        "@dataclass(slots=True)\nclass A:\n    x: int\n",
    ],
)
def test_the_check_finds_310_code(snippet: str) -> None:
    assert problems_39("snippet.py", snippet), snippet


def test_the_check_allows_39_code() -> None:
    ok = (
        "from __future__ import annotations\n"
        "def f(x: int | None = None) -> str | None:\n    y: int | None = x\n    return None\n"
        "flags = 1 | 2\n"
    )
    assert problems_39("ok.py", ok) == []
