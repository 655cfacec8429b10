"""The 224-px models of tests/models/realsize.py, for the real-size benchmarks (run as scripts:
this folder is on their path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

MODELS = Path(__file__).resolve().parents[1] / "tests" / "models" / "realsize.py"


def realsize() -> ModuleType:
    """tests/models/realsize.py as a module (its models and ``write_data``)."""
    spec = importlib.util.spec_from_file_location("_realsize_bench", MODELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
