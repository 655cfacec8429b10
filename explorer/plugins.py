"""Registries fill themselves: import every module of a package, and the user's plugins.

``$PRUNING_EXPLORER_PLUGINS`` lists modules (``package.module``) or files (``path/to/file.py``),
comma-separated, that register more methods or allocation targets when imported. A plugin that
cannot be imported is an error naming it, not silently ignored.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

from explorer.errors import ExplorerError

__all__ = ["PLUGINS_ENV", "forget_plugin", "load_package", "load_plugins"]

PLUGINS_ENV = "PRUNING_EXPLORER_PLUGINS"
_loaded: set[str] = set()


def load_package(package: str) -> None:
    """Import every module of ``package`` (each registers what it defines)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def forget_plugin(spec: str) -> None:
    """Let ``spec`` be imported again by the next :func:`load_plugins` (tests that unregister
    it)."""
    _loaded.discard(spec)


def load_plugins() -> None:
    """Import the modules and files named in ``$PRUNING_EXPLORER_PLUGINS`` (each once)."""
    for spec in (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not spec or spec in _loaded:
            continue
        _loaded.add(spec)
        try:
            if spec.endswith(".py"):
                path = Path(spec).expanduser().resolve()
                name = f"_explorer_plugin_{path.stem}"
                loader_spec = importlib.util.spec_from_file_location(name, path)
                if loader_spec is None or loader_spec.loader is None:
                    raise ImportError(f"not a Python file: {path}")
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                loader_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except Exception as e:
            raise ExplorerError(
                f"plugin {spec!r} (from ${PLUGINS_ENV}) cannot be imported: {type(e).__name__}: {e}"
            ) from None
