"""The public surface: what each facade's ``__all__`` promises resolves, under a public
``__module__``, pickles by reference; and the one error tree is what the docs draw."""

from __future__ import annotations

import copy
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

import edgekit
from edgekit import _errors  # internal: the tree the facades publish is checked against it

REPO = Path(__file__).resolve().parents[1]
FACADES = (
    "edgekit",
    "edgekit.runtime",
    "edgekit.converters",
    "edgekit.devices",
    "edgekit.serve",
    "edgekit.evaluate",
)
# Modules that define errors outside edgekit._errors (imported so their classes are seen).
ERROR_HOMES = ("edgekit.devices._emulator",)
# Builtin bases that callers catch (`except ValueError`) and that must stay.
BUILTIN_BASES = {
    "MissingExtraError": ImportError,
    "InputError": ValueError,
    "ModelClosedError": RuntimeError,
    "StateError": ValueError,
    "ProtocolError": ValueError,
}
# Where each error could be imported from before the tree was one module: still works.
OLD_HOMES = {
    "edgekit.runtime._input": ("InputError",),
    "edgekit.runtime._persist": ("StateError",),
    "edgekit.runtime._model": ("ModelClosedError",),
    "edgekit._kserve": ("ProtocolError",),
    "edgekit.serve._config": ("ServeError",),
    "edgekit.converters._quantize": ("QATUnsupportedError",),
}
TREE_LINE = re.compile(
    r"^[ │├└─]*(?P<name>[A-Z]\w+)(?: \((?P<bases>[\w, ]+)\))?\s+(?P<home>edgekit[\w.]*)\s*$"
)


def _public_names() -> list[tuple[str, str]]:
    return [(f, n) for f in FACADES for n in importlib.import_module(f).__all__]


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


@pytest.mark.parametrize(("facade", "name"), _public_names())
def test_every_public_name_resolves_under_a_public_module(facade: str, name: str) -> None:
    value = getattr(importlib.import_module(facade), name)
    if not (isinstance(value, type) or callable(value)) or name == "__version__":
        return
    if getattr(value, "__name__", name) != name:
        # an alias (devices.probe is probe_device): it keeps the module that has its name
        home = importlib.import_module(value.__module__)
        assert getattr(home, value.__qualname__) is value
        return
    module = value.__module__
    assert not _is_private(module), f"{facade}.{name} shows the private module {module}"
    assert getattr(importlib.import_module(module), value.__qualname__) is value
    assert pickle.loads(pickle.dumps(value)) is value


def test_a_lazy_facade_publishes_every_name_of_a_module_it_loads() -> None:
    import edgekit.devices as devices

    # asking for push alone also gives PushResult (same private module) its public name,
    # so a PushResult pickled by a user who never spelled the name still unpickles
    devices.push  # noqa: B018
    from edgekit.devices import _push  # internal: the private class a lazy facade publishes

    assert _push.PushResult.__module__ == "edgekit.devices"
    assert pickle.loads(pickle.dumps(_push.PushResult)) is _push.PushResult


def test_records_pickle_and_copy_through_their_public_module() -> None:
    from edgekit.devices import PushResult, Target
    from edgekit.runtime import Prediction
    from edgekit.serve import ServeConfig

    pred = Prediction(*range(len(Prediction._fields)))
    target = Target(name="pi0", host="10.0.0.7", user="pi", port=22)
    for value in (pred, target, ServeConfig(port=0, token="s3cret")):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value
    assert PushResult.__module__ == "edgekit.devices"


def _all_errors() -> list[type[edgekit.EdgekitError]]:
    for m in (*FACADES, *ERROR_HOMES):
        importlib.import_module(m)
    seen: list[type[edgekit.EdgekitError]] = []
    todo = [edgekit.EdgekitError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(c for c in cls.__subclasses__() if c.__module__.startswith("edgekit"))
    return seen


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
def test_every_error_carries_its_hint_and_context_and_pickles(cls: type[Any]) -> None:
    assert issubclass(cls, edgekit.EdgekitError)
    assert cls.__doc__, f"{cls.__name__} has no docstring"
    assert not _is_private(cls.__module__), f"{cls.__name__} shows {cls.__module__}"
    assert getattr(importlib.import_module(cls.__module__), cls.__name__) is cls
    if cls.__name__ in BUILTIN_BASES:
        assert issubclass(cls, BUILTIN_BASES[cls.__name__])
    err = cls("the state file is not JSON", hint="delete it and start again", path="/s.json")
    assert (err.message, err.hint, err.context) == (
        "the state file is not JSON",
        "delete it and start again",
        {"path": "/s.json"},
    )
    assert str(err).endswith("hint: delete it and start again")
    for back in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert type(back) is cls
        assert (back.message, back.hint, back.context, str(back)) == (
            err.message,
            err.hint,
            err.context,
            str(err),
        )


def test_protocol_error_keeps_its_status_through_pickle() -> None:
    from edgekit.serve import ProtocolError

    back = pickle.loads(pickle.dumps(ProtocolError("too big", status=413, hint="send less")))
    assert (back.status, back.hint) == (413, "send less")


def test_old_import_locations_give_the_same_classes() -> None:
    device_errors = tuple(c.__name__ for c in _all_errors() if issubclass(c, _errors.DeviceError))
    homes = {**OLD_HOMES, "edgekit.devices._errors": device_errors}
    assert len(device_errors) > 8
    for module, names in homes.items():
        mod = importlib.import_module(module)
        for name in names:
            assert getattr(mod, name) is getattr(_errors, name), f"{module}.{name}"


def test_state_error_is_an_edgekit_error_and_still_a_value_error(tmp_path: Path) -> None:
    from edgekit.runtime import StateError
    from edgekit.runtime._persist import read_state  # internal: the state-file reader alone

    (tmp_path / "state.json").write_bytes(b"[1, 2]")
    with pytest.raises(ValueError) as info:
        read_state(tmp_path / "state.json")
    assert isinstance(info.value, StateError)
    assert isinstance(info.value, edgekit.EdgekitError)
    assert "not a JSON object" in info.value.message


def _drawn_tree(text: str) -> dict[str, tuple[str | None, str, tuple[str, ...]]]:
    """name -> (parent, home, builtin bases) from a drawing like edgekit._errors's."""
    tree: dict[str, tuple[str | None, str, tuple[str, ...]]] = {}
    stack: list[str] = []
    root = 0
    for line in text.splitlines():
        m = TREE_LINE.match(line)
        if not m:
            continue
        if m["name"] == "EdgekitError":
            root = m.start("name")
        depth = (m.start("name") - root) // 4  # each level is drawn 4 columns further in
        del stack[depth:]
        bases = tuple(b.strip() for b in m["bases"].split(",")) if m["bases"] else ()
        tree[m["name"]] = (stack[-1] if stack else None, m["home"], bases)
        stack.append(m["name"])
    return tree


def _code_tree() -> dict[str, tuple[str | None, str, tuple[str, ...]]]:
    tree: dict[str, tuple[str | None, str, tuple[str, ...]]] = {}
    for cls in _all_errors():
        ours = [b for b in cls.__bases__ if issubclass(b, edgekit.EdgekitError)]
        builtins = tuple(b.__name__ for b in cls.__bases__ if b.__module__ == "builtins")
        parent = ours[0].__name__ if ours else None
        tree[cls.__name__] = (parent, cls.__module__, builtins if parent else ())
    return tree


def test_the_drawn_error_tree_is_the_code() -> None:
    drawn = _drawn_tree(_errors.__doc__ or "")
    assert len(drawn) > 20 and drawn["HostNotSupported"][0] == "EmulatorError"
    assert drawn == _code_tree()


def test_architecture_md_draws_the_same_error_tree() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text()
    assert _drawn_tree(text) == _code_tree()
    for facade in FACADES:
        assert f"`{facade}`" in text, f"ARCHITECTURE.md does not name {facade}"


def test_mypy_checks_the_oldest_python_that_requires_python_allows() -> None:
    import sys

    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    oldest = cfg["project"]["requires-python"]
    assert re.fullmatch(r">=\d+\.\d+", oldest), f"requires-python {oldest!r} is not '>=X.Y'"
    assert cfg["tool"]["mypy"]["python_version"] == oldest[2:]
    assert sys.version_info >= tuple(int(x) for x in oldest[2:].split("."))
