"""The Prune page: sliders re-evaluate the really pruned model, groups move together, locks and
skips hold, the history keeps every configuration and restores any of them, and nothing is lost
when the user switches pages."""

from __future__ import annotations

from pathlib import Path

import pytest
from apphelpers import metrics, open_app

from explorer import Subject
from explorer import allocate as alloc
from explorer import sensitivity as sens
from explorer.plan import LayerRule, PruningPlan


def test_slider_changes_metrics_and_plan() -> None:
    at = open_app("prune")
    dense = metrics(at)
    assert dense["Nonzero params"] == "390,890"
    at.slider(key="prune.ratio.features.11").set_value(50).run()
    assert not at.exception
    after = metrics(at)
    assert after["Nonzero params"] == f"{390_890 - 294_912 // 2:,}"  # half of features.11's weights
    assert after["Parameters"] == "390,890"  # unstructured: zeros, the shapes stay
    assert at.session_state["drafts"]["zoo:digits-cnn|"].ratios["features.11"] == 0.5
    notes = [i.value for i in at.info]
    assert any("latency does not drop" in n for n in notes)


def test_structured_method_shrinks_the_model_and_says_so() -> None:
    at = open_app("prune")
    at.selectbox(key="prune.method").set_value("l2-structured").run()
    at.slider(key="prune.ratio.features.7").set_value(50).run()
    assert not at.exception
    shown = metrics(at)
    assert shown["Parameters"] != "390,890"
    assert any("really shrinks" in s.value for s in at.success)
    # The output layer cannot lose channels: its slider is disabled.
    assert at.slider(key="prune.ratio.classifier").disabled


def test_structured_group_moves_together() -> None:
    at = open_app()
    at.selectbox[0].set_value("zoo:digits-resnet")
    at.button[0].click().run()
    at.switch_page("pages/prune.py").run()
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    at.slider(key="prune.ratio.layer1.0.conv2").set_value(25).run()
    assert not at.exception
    for member in ("stem.0", "layer1.0.conv2", "layer1.1.conv2"):  # one residual group
        assert at.slider(key=f"prune.ratio.{member}").value == 25
    assert at.slider(key="prune.ratio.layer1.0.conv1").value == 0


def test_global_slider_respects_lock_and_skip() -> None:
    at = open_app("prune")
    at.slider(key="prune.ratio.features.3").set_value(10).run()
    at.checkbox(key="prune.lock.features.3").check().run()
    at.checkbox(key="prune.skip.features.0").check().run()
    at.slider(key="prune.global").set_value(60).run()
    assert not at.exception
    values = {
        n: at.slider(key=f"prune.ratio.{n}").value
        for n in ("features.0", "features.3", "features.7", "classifier")
    }
    assert values == {"features.0": 0, "features.3": 10, "features.7": 60, "classifier": 60}
    assert at.slider(key="prune.ratio.features.3").disabled  # locked
    draft = at.session_state["drafts"]["zoo:digits-cnn|"]
    assert draft.locked == {"features.3"} and draft.skipped == {"features.0"}
    assert "features.0" not in at.session_state["history"][-1]["summary"]


def test_global_scope_ranks_across_layers() -> None:
    at = open_app("prune")
    at.radio(key="prune.scope").set_value("global").run()
    at.slider(key="prune.global").set_value(50).run()
    assert not at.exception
    assert at.slider(key="prune.ratio.features.7").disabled
    total = 288 + 18_432 + 73_728 + 294_912 + 2_560  # every weight of every layer
    assert metrics(at)["Nonzero params"] == f"{390_890 - round(0.5 * total):,}"


def test_history_and_restore() -> None:
    at = open_app("prune")
    for v in (20, 40, 60):
        at.slider(key="prune.ratio.features.3").set_value(v).run()
    entries = at.session_state["history"]
    assert [e["n"] for e in entries] == [1, 2, 3]
    assert len(at.get("plotly_chart")) == 1  # the Pareto plots
    assert at.dataframe[0].value["n"].tolist() == [0, 1, 2, 3]
    at.selectbox(key="prune.restore").set_value(1).run()
    restore = next(b for b in at.button if b.label == "Restore")
    restore.click().run()
    assert not at.exception
    assert at.slider(key="prune.ratio.features.3").value == 20
    assert any("Restored configuration #1" in s.value for s in at.success)
    assert len(at.session_state["history"]) == 3  # restoring adds nothing new


def test_state_survives_page_switches() -> None:
    at = open_app("prune")
    at.selectbox(key="prune.method").set_value("random-unstructured").run()
    at.slider(key="prune.ratio.features.7").set_value(33).run()
    at.checkbox(key="prune.lock.features.7").check().run()
    for page in ("model", "weights", "export", "prune"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception
    assert at.selectbox(key="prune.method").value == "random-unstructured"
    assert at.slider(key="prune.ratio.features.7").value == 33
    assert at.checkbox(key="prune.lock.features.7").value
    assert len(at.session_state["history"]) == 1


def test_import_restores_a_plan_and_rejects_one_that_does_not_fit() -> None:
    at = open_app("export")
    good = PruningPlan("l1-structured", {"features.7": LayerRule(0.5)}).to_json()
    at.text_area(key="export.paste").input(good).run()
    next(b for b in at.button if b.label == "Restore this plan").click().run()
    assert not at.exception
    assert any("Restored" in s.value for s in at.success)
    at.text_area(key="export.paste").input(
        '{"format": "pruning-explorer/plan", "version": 1, '
        '"method": "l1-unstructured", "layers": {"conv9": 0.5}}'
    ).run()
    next(b for b in at.button if b.label == "Restore this plan").click().run()
    assert not at.exception
    assert "conv9" in at.error[0].value
    at.switch_page("pages/prune.py").run()
    assert at.selectbox(key="prune.method").value == "l1-structured"
    assert at.slider(key="prune.ratio.features.7").value == 50
    assert len(at.session_state["history"]) == 1  # the good plan only


def test_the_allocation_says_what_it_will_scan_and_the_sensitivity_page_scans_just_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))  # an empty cache
    method = alloc.default_method("sparsity")
    needs = alloc.curve_needs(Subject("zoo:digits-cnn"), "sparsity", method)
    total = needs.left + needs.cached
    assert needs.left == total > 0
    at = open_app("prune")
    at.selectbox(key="prune.alloc.kind").set_value("sparsity").run()
    assert any(
        c.value.startswith(f"It first scans {total} of its {total} sensitivity points ({method}")
        for c in at.caption
    ), [c.value for c in at.caption]
    at.switch_page("pages/sensitivity.py").run()
    at.selectbox(key="sensitivity.method").set_value(method).run()
    at.button(key="sensitivity.allocation_ratios").click().run()
    assert at.multiselect(key="sensitivity.ratios").value == [round(100 * r) for r in needs.ratios]
    next(b for b in at.button if b.label == "Run scan").click().run(timeout=600)
    assert not at.exception
    at.switch_page("pages/prune.py").run()
    assert any(
        c.value.startswith(f"Its {total} sensitivity points ({method}")
        and c.value.endswith("are all measured: it starts from them.")
        for c in at.caption
    ), [c.value for c in at.caption]


def test_an_allocation_on_a_subset_of_the_samples_says_so_and_is_verified_on_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))  # an empty cache
    at = open_app("prune")
    at.selectbox(key="prune.alloc.kind").set_value("sparsity").run()
    images = at.selectbox(key="prune.alloc.images")
    assert images.options == [
        "all 360 samples",
        "32 samples",
        "64 samples",
        "128 samples",
        "256 samples",
    ]
    assert images.value == 0  # every sample unless asked
    images.set_value(64).run()
    caption = next(c.value for c in at.caption if c.value.startswith("It first scans"))
    assert "each on 64 of the 360 samples" in caption and "verified on all of them" in caption
    at.button(key="prune.allocate").click().run(timeout=600)
    assert not at.exception
    summary = next(m.value for m in at.markdown if m.value.startswith("Achieved"))
    assert "Curves measured on 64 of the 360 evaluation samples (a seeded subset)" in summary
    assert "and on all it is" in summary and "verified" in summary
    caption = next(c.value for c in at.caption if c.value.startswith("Its "))
    assert caption.endswith("are all measured: it starts from them."), caption
    at.button(key="prune.allocate.use").click().run(timeout=120)
    assert not at.exception
    draft = at.session_state["drafts"]["zoo:digits-cnn|"]
    assert draft.method == "l1-unstructured" and any(r > 0 for r in draft.ratios.values())


def test_automatic_allocation_meets_its_target_and_becomes_the_editable_plan() -> None:
    at = open_app("prune")
    at.selectbox(key="prune.alloc.kind").set_value("macs").run()
    at.button(key="prune.allocate").click().run(timeout=600)
    assert not at.exception
    summary = next(m.value for m in at.markdown if m.value.startswith("Achieved"))
    assert "(met," in summary and "predicted from the curves" in summary and "verified" in summary
    at.button(key="prune.allocate.use").click().run(timeout=120)
    assert not at.exception
    draft = at.session_state["drafts"]["zoo:digits-cnn|"]
    assert draft.method == "l1-structured" and any(r > 0 for r in draft.ratios.values())
    # The sliders hold the allocation, and the live metrics are those of that plan: half the MACs or
    # fewer.
    macs = metrics(at)["MACs"]
    assert float(macs.split()[0]) <= 0.5 * 56.92 + 0.01, macs
