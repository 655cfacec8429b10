"""Model specs: ``zoo:NAME``, ``PATH.py:FUNC``, ``package.module:FUNC``.

A python entrypoint is the user's own code and is run as such (the app labels it). Weights inside
it should be loaded with ``weights_only=True``; we never unpickle a file ourselves.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from explorer.errors import ExplorerError, ModelLoadError

__all__ = ["call_entrypoint", "load_model"]


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
            sys.modules[mod_name] = module  # dataclasses and pickling-free typing need it registered
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


def load_model(spec: str) -> nn.Module:
    """Load a model spec into an ``nn.Module`` in eval mode.

    Raises:
        ModelLoadError: naming the spec and what is wrong with it.
    """
    from explorer.models.zoo import ZOO, build

    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in ZOO:
            raise ModelLoadError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
        return build(name)
    if spec.endswith((".pt2", ".onnx")):
        raise ModelLoadError(f"{spec}: .pt2 and .onnx models are not supported yet; give PATH.py:FUNC")
    if ":" not in spec:
        raise ModelLoadError(f"{spec}: unknown model spec; use zoo:NAME or PATH.py:FUNC")
    model = call_entrypoint(spec, ModelLoadError)
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}: must return a torch.nn.Module, got {type(model).__name__}")
    return model.eval()
