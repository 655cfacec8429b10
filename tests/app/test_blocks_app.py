"""Whole blocks in the app: the Prune page removes the chosen residual blocks (their layers' sliders
say so), the plan carries them, and the Sensitivity page measures each block removed alone."""

from __future__ import annotations

from apphelpers import metrics, open_app

from explorer.plan import PruningPlan
from explorer.subject import Subject


def _resnet(page: str):  # noqa: ANN202
    at = open_app()
    at.selectbox[0].set_value("zoo:digits-resnet")
    at.button[0].click().run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def test_prune_page_removes_a_block_and_the_plan_says_so() -> None:
    at = _resnet("prune")
    dense = int(metrics(at)["Parameters"].replace(",", ""))
    at.multiselect(key="prune.blocks").set_value(["layer2.1"]).run(timeout=120)
    assert not at.exception, at.exception
    # layer2.1 (two 64x64x3x3 convolutions and their batch norms) is gone
    assert int(metrics(at)["Parameters"].replace(",", "")) == dense - 73_984
    slider = at.slider(key="prune.ratio.layer2.1.conv1")
    assert slider.disabled and "removed with the block layer2.1" in slider.help
    draft = at.session_state["drafts"]["zoo:digits-resnet|"]
    assert list(draft.removed) == ["layer2.1"]
    assert "blocks removed: layer2.1" in at.session_state["history"][-1]["summary"]
    assert draft.to_plan(Subject("zoo:digits-resnet").inventory).blocks == ("layer2.1",)
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    shown = PruningPlan.from_json(at.code[0].value)  # the plan the Export page shows and exports
    assert shown.blocks == ("layer2.1",)


def test_sensitivity_page_measures_every_block_removed() -> None:
    at = _resnet("sensitivity")
    at.button(key="blocks.run").click().run(timeout=300)
    assert not at.exception, at.exception
    assert "blocks.chart" in [c.key for c in at.get("plotly_chart")]
    table = at.dataframe[0].value
    assert list(table["block"]) == ["layer1.0", "layer1.1", "layer2.1"]
    assert (table["parameters saved"] > 0).all()
    again = _resnet("sensitivity")  # another session: the measured blocks come back at once
    assert "blocks.chart" in [c.key for c in again.get("plotly_chart")]


def test_sensitivity_page_says_why_a_model_has_no_block() -> None:
    at = open_app("sensitivity")  # zoo:digits-cnn: a plain stack of convolutions
    assert any("No block of this model can be removed whole" in i.value for i in at.info)
