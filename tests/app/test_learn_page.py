"""AppTest of the Learn page: every experiment runs from its button, shows a chart and a measured
paragraph, and hands its configuration to the Prune page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.learn import EXPERIMENTS

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def _learn_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.switch_page("pages/learn.py").run(timeout=60)
    assert not at.exception
    return at


def test_primer_draws_the_models_own_masks() -> None:
    at = _learn_page()
    keys = {chart.proto.id for chart in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) >= 2, keys
    assert len(at.button) == len(EXPERIMENTS)


@pytest.mark.parametrize("key", list(EXPERIMENTS))
def test_experiment_runs_and_continues_in_prune(key: str) -> None:
    at = _learn_page()
    charts_before = len(at.get("plotly_chart"))
    at.button(key=f"learn.run.{key}").click().run(timeout=180)
    assert not at.exception
    assert len(at.get("plotly_chart")) == charts_before + 1
    verdicts = [
        m.value for m in at.markdown if m.value.startswith(("**Holds", "**Does not hold", "** "))
    ]
    assert verdicts, "no measured paragraph"
    assert re.search(r"\d", verdicts[0]), "the paragraph states no number"
    model = EXPERIMENTS[key].model
    switches = model != at.session_state["model_spec"]
    button = at.button(key=f"learn.continue.{key}")
    assert (model in button.label) == switches  # the hand-over says when it switches the model
    button.click().run(timeout=60)
    assert not at.exception
    assert at.session_state["model_spec"] == model
    assert [t.value for t in at.title] == ["Prune"]
    if switches:
        assert any(w.value.startswith("Switched the model from zoo:digits-cnn") for w in at.warning)
    else:
        assert any("Loaded the configuration" in i.value for i in at.info)


def test_primer_text_matches_its_masks() -> None:
    at = _learn_page()
    primer = next(m.value for m in at.markdown if "Unstructured" in m.value)
    assert "red cells are the weights that go, blue ones stay" in primer and "grey" not in primer
    mask = next(c for c in at.get("plotly_chart") if c.key == "learn.mask.unstructured")
    assert "blue kept, red removed" in json.loads(mask.proto.spec)["layout"]["title"]["text"]
