"""Fixtures shared by the library tests: cached Subjects, the unseen models and their data files.

``unseen_name`` parametrizes a test over every model in ``tests/models/unseen.py``; ``zoo_name``
over every zoo model; ``method`` over every registered pruning method (so a new model or method is
tested without touching the tests).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from explorer.methods import available_methods, get_method
from explorer.models import ZOO
from explorer.plan import LayerRule, PruningPlan
from explorer.subject import Subject

UNSEEN_PATH = Path(__file__).resolve().parents[1] / "models" / "unseen.py"


def load_unseen() -> ModuleType:
    """tests/models/unseen.py as a module (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_unseen_models", UNSEEN_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNSEEN = load_unseen()


def unseen_spec(name: str) -> str:
    """The ``PATH.py:FUNC`` model spec of unseen model ``name``."""
    return f"{UNSEEN_PATH}:{name}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = set()
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        (
            explicit.update(n.strip() for n in names.split(","))
            if isinstance(names, str)
            else explicit.update(names)
        )
    for name, values in (
        ("unseen_name", list(UNSEEN.MODELS)),
        ("zoo_name", list(ZOO)),
        ("method", available_methods()),
    ):
        if name in metafunc.fixturenames and name not in explicit:
            metafunc.parametrize(name, values)


@pytest.fixture(scope="session")
def unseen() -> ModuleType:
    return UNSEEN


@pytest.fixture(scope="session")
def unseen_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """``unseen_data(name, labels)``: path of that model's test .npz (``x`` and ``y``, or ``x``
    only)."""
    out = tmp_path_factory.mktemp("unseen-data")

    def get(name: str, labels: bool = True) -> Path:
        path = out / (f"{name}.npz" if labels else f"{name}-nolabels.npz")
        if not path.exists():
            UNSEEN.write_npz(name, out, labels=labels)
        return path

    return get


@pytest.fixture(scope="session")
def subject() -> Callable[..., Subject]:
    """``subject(model_spec, data_spec=None)``: a Subject, built once per session (30 timed
    runs)."""
    cache: dict[tuple[str, str | None], Subject] = {}

    def get(model_spec: str, data_spec: str | Path | None = None) -> Subject:
        key = (model_spec, None if data_spec is None else str(data_spec))
        if key not in cache:
            cache[key] = Subject(model_spec, key[1], threads=1, runs=30)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def unseen_subject(
    subject: Callable[..., Subject], unseen_data: Callable[[str, bool], Path]
) -> Callable[..., Subject]:
    """``unseen_subject(name, labels=True)``: the Subject of an unseen model with its .npz."""

    def get(name: str, labels: bool = True) -> Subject:
        return subject(unseen_spec(name), unseen_data(name, labels))

    return get


def _full_plan(subj: Subject, method: str, ratio: float = 0.5) -> PruningPlan:
    """Every layer the method applies to (structured methods: grouped layers), at ``ratio``."""
    m = get_method(method)
    names = [n for n in subj.layer_names if m.applies_to(n, subj.inventory) is None]
    return PruningPlan(
        method=method, layers={n: LayerRule(ratio) for n in names}, model=subj.model_spec
    )


def _mixed_plan(subj: Subject, ratio: float = 0.4) -> PruningPlan:
    layers = {
        layer.name: LayerRule(ratio, None if layer.group is not None else "l1-unstructured")
        for layer in subj.inventory.layers
    }
    return PruningPlan(method="l2-structured", layers=layers, model=subj.model_spec)


@pytest.fixture(scope="session")
def full_plan() -> Callable[..., PruningPlan]:
    """``full_plan(subject, method, ratio=0.5)``: ``method`` on every layer it can prune
    (structured methods: every grouped layer; the others: every layer)."""
    return _full_plan


@pytest.fixture(scope="session")
def mixed_plan() -> Callable[..., PruningPlan]:
    """``mixed_plan(subject, ratio=0.4)``: l2-structured on every grouped layer, l1-unstructured on
    every other layer."""
    return _mixed_plan
