"""Calling a user's ``PATH.py:FUNC`` or ``package.module:FUNC`` (a model or a data set): this runs
their code, on purpose; its failures become the caller's error type naming the spec."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from explorer.errors import ExplorerError

__all__ = ["call_entrypoint"]


def call_entrypoint(spec: str, error: type[ExplorerError]) -> Any:
    """Import ``PATH.py:FUNC`` or ``package.module:FUNC`` and call FUNC with no arguments."""
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name.isidentifier():
        raise error(f"{spec}: expected PATH.py:FUNC or package.module:FUNC")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise error(f"{spec}: no such file {target}")
            mod_name = f"_explorer_user_{abs(hash(str(path)))}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = (
                module  # dataclasses and pickling-free typing need it registered
            )
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ExplorerError:
        raise
    except Exception as e:
        raise error(f"{spec}: importing {target} failed: {type(e).__name__}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise error(f"{spec}: {target} has no callable {func_name!r}")
    try:
        return func()
    except Exception as e:
        raise error(f"{spec}: calling {func_name}() failed: {type(e).__name__}: {e}") from None
