"""A user's own model (a PATH.py:FUNC spec and a .npz) through every page, labelled and not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from apphelpers import ROOT, metrics, open_app

UNSEEN_PATH = ROOT / "tests" / "models" / "unseen.py"


def _unseen():
    spec = importlib.util.spec_from_file_location("_unseen_models_app", UNSEEN_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "labels"), [("residual_1d", True), ("tabular_mlp", False)])
def test_user_model_on_every_page(tmp_path: Path, name: str, labels: bool) -> None:
    _unseen().write_npz(name, tmp_path, labels=labels)
    data = str(next(tmp_path.glob("*.npz")))
    at = open_app()
    at.radio(key="model.source").set_value("Your own").run()
    at.text_input[0].input(f"{UNSEEN_PATH}:{name}")
    at.text_input[1].input(data)
    at.button[0].click().run()
    assert not at.exception and not at.error, at.error
    assert at.session_state["data_spec"] == data

    at.switch_page("pages/prune.py").run()
    movable = [s.key for s in at.slider if s.key.startswith("prune.ratio.") and not s.disabled]
    at.slider(key=movable[0]).set_value(40).run()
    assert not at.exception and not at.error
    assert ("Accuracy" if labels else "Agreement") in metrics(at)
    at.selectbox(key="prune.method").set_value("l2-structured").run()
    movable = [s.key for s in at.slider if s.key.startswith("prune.ratio.") and not s.disabled]
    at.slider(key=movable[0]).set_value(50).run()
    assert not at.exception and not at.error
    assert len(at.session_state["history"]) >= 2  # every configuration evaluated is kept

    at.switch_page("pages/weights.py").run()
    assert not at.exception
    at.switch_page("pages/export.py").run()
    at.button[0].click().run(timeout=180)
    assert not at.exception and not at.error
    assert f"--data {data}" in at.code[1].value
