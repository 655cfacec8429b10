"""Pruning methods: one strategy object per criterion, one registry.

Every module of this package registers its methods when imported (``register(MyMethod())``), and
the package imports all of its modules on first lookup: adding a criterion is one new file here.
Modules named in ``$PRUNING_EXPLORER_PLUGINS`` (comma-separated module names or ``.py`` paths) are
imported too, so a method can also live outside the package. Names follow the house pattern,
criterion then granularity (``l1-unstructured``, ``l2-structured``, ``2:4``...).
"""

from __future__ import annotations

from explorer.errors import UnknownMethodError
from explorer.methods.base import (
    ChannelMethod,
    Kind,
    LayerContext,
    Method,
    WeightMethod,
    layer_generator,
    layer_is_hookable,
    unstructured_mask,
)
from explorer.plugins import load_package, load_plugins

__all__ = [
    "ChannelMethod",
    "Kind",
    "LayerContext",
    "Method",
    "WeightMethod",
    "available_methods",
    "get_method",
    "layer_generator",
    "layer_is_hookable",
    "register",
    "unregister",
    "unstructured_mask",
]

_METHODS: dict[str, Method] = {}
_loaded = False


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a later registration of the same name replaces it)."""
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method from the registry (a plugin's tests clean up after themselves)."""
    _METHODS.pop(name, None)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        load_package(__name__)
    # cheap once done: a plugin named later (a new $PRUNING_EXPLORER_PLUGINS) still loads
    load_plugins()


def available_methods() -> list[str]:
    _load()
    return sorted(_METHODS)


def get_method(name: str | Method) -> Method:
    """The registered method called ``name`` (a method is returned as it is)."""
    if isinstance(name, Method):
        return name
    _load()
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise UnknownMethodError(
            f"unknown pruning method {name!r}; choose from {available_methods()}"
        ) from None
