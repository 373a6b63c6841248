"""Public names get a public ``__module__``: ``edgekit.PackageError``, not ``edgekit._errors``.

Every facade (``edgekit``, ``edgekit.runtime``, ``edgekit.devices``...) calls
:func:`publish` on its eagerly imported names and loads its lazy names through
:func:`load_lazy`, which publishes them on first use. Only classes and functions that were
defined in a private edgekit module are renamed, and only when their own name is the
public one (an alias such as ``devices.probe`` for ``probe_device`` keeps its module:
``pickle`` finds objects by ``__module__`` plus ``__qualname__``, and the facade has no
``probe_device``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["load_lazy", "publish", "publish_one"]


def _private(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "edgekit" and any(p.startswith("_") for p in parts)


def publish_one(name: str, value: Any, facade: str) -> None:
    """Set ``value.__module__`` to ``facade`` if it is a class or function named ``name``
    that was defined in a private edgekit module; anything else is left as it is."""
    if not isinstance(value, type) and not callable(value):
        return
    if getattr(value, "__name__", None) != name or getattr(value, "__qualname__", None) != name:
        return
    module = getattr(value, "__module__", None)
    if isinstance(module, str) and _private(module):
        value.__module__ = facade


def publish(namespace: Mapping[str, Any], names: Iterable[str] | None = None) -> None:
    """Publish every name of ``names`` (default: the namespace's ``__all__``) that is bound
    in ``namespace`` (a facade's ``globals()``) under the facade's ``__name__``."""
    facade = namespace["__name__"]
    for name in namespace["__all__"] if names is None else names:
        if name in namespace:
            publish_one(name, namespace[name], facade)


def load_lazy(facade: str, lazy: Mapping[str, tuple[str, str | None]], name: str) -> Any:
    """The facade's lazy attribute ``name``: ``lazy`` maps a public name to (module, attribute
    or None for the module itself), the module absolute or relative to ``facade``. Loading a
    module publishes every name the facade takes from it, so its classes show the public
    ``__module__`` even when only one of them was asked for."""
    try:
        module, attr = lazy[name]
    except KeyError:
        raise AttributeError(f"module {facade!r} has no attribute {name!r}") from None
    mod = importlib.import_module(module, facade)
    for public, (m, a) in lazy.items():
        if m == module and a is not None:
            publish_one(public, getattr(mod, a), facade)
    return mod if attr is None else getattr(mod, attr)
