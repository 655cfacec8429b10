"""Every page opens from app.py without an exception and shows what it is for."""

from __future__ import annotations

from apphelpers import metrics, open_app

from explorer.models import ZOO


def test_model_page_summary_and_layer_table() -> None:
    at = open_app()
    assert at.title[0].value == "Model"
    shown = metrics(at)
    assert shown["Parameters"] == "390,890"
    assert {"MACs", "Accuracy", "Latency, median", "ONNX size"} <= set(shown)
    table = at.dataframe[0].value
    assert list(table["name"]) == [
        "features.0",
        "features.3",
        "features.7",
        "features.11",
        "classifier",
    ]
    assert table["group"].iloc[-1] == ""  # the classifier's channels are the classes


def test_model_page_opens_every_zoo_model() -> None:
    at = open_app()
    for name in ZOO:
        at.selectbox[0].set_value(f"zoo:{name}")
        at.button[0].click().run()
        assert not at.exception
        assert at.session_state["model_spec"] == f"zoo:{name}"
        assert at.subheader[0].value.startswith(f"zoo:{name}")


def test_bad_model_spec_is_an_error_not_a_crash() -> None:
    at = open_app()
    at.radio(key="model.source").set_value("Your own").run()
    at.text_input[0].input("no/such/file.py:build")
    at.text_input[1].input("zoo:digits-32")
    at.button[0].click().run()
    assert not at.exception
    assert at.error and "no/such/file.py" in at.error[0].value
    assert at.session_state["model_spec"] == "zoo:digits-cnn"  # the session keeps its model
    assert metrics(at)["Parameters"] == "390,890"


def test_weights_page_every_method() -> None:
    at = open_app("weights")
    for method in (
        "l1-unstructured",
        "random-unstructured",
        "2:4",
        "l1-structured",
        "l2-structured",
    ):
        at.selectbox(key="weights.method").set_value(method).run()
        assert not at.exception
        assert not at.error, at.error[0].value
        charts = at.get("plotly_chart")
        assert len(charts) == (3 if "structured" in method and "un" not in method else 2), method
    at.toggle(key="weights.log").set_value(True).run()
    assert not at.exception
    assert at.dataframe[0].value["layer"].tolist()[-1] == "classifier"


def test_weights_page_structured_on_output_layer_explains() -> None:
    at = open_app("weights")
    at.selectbox(key="weights.layer").set_value("classifier").run()
    at.selectbox(key="weights.method").set_value("l2-structured").run()
    assert not at.exception
    assert "classifier" in at.error[0].value and "output" in at.error[0].value


def test_weights_preview_starts_at_the_drafts_ratio() -> None:
    at = open_app("prune")
    at.slider(key="prune.ratio.features.7").set_value(35).run()
    at.switch_page("pages/weights.py").run()
    at.selectbox(key="weights.layer").set_value("features.7").run()
    assert at.slider(key="weights.ratio").value == 35


def _charts(at) -> list[str]:
    return [c.key for c in at.get("plotly_chart")]


def test_sensitivity_page_scan_is_cached_and_downloadable() -> None:
    at = open_app("sensitivity")
    assert at.info  # nothing scanned yet: says what to do
    at.multiselect(key="sensitivity.ratios").set_value([50]).run()
    assert _charts(at) == ["sensitivity.proxy"]  # the data-free tier shows before any scan
    assert any(
        c.value.startswith(("Scan: ", "All points are cached")) for c in at.caption
    )  # the ETA
    at.button[0].click().run(timeout=600)
    assert not at.exception
    assert _charts(at) == ["sensitivity.proxy", "sensitivity.chart"]
    assert at.get("download_button")
    at.selectbox(key="sensitivity.highlight").set_value("features.3").run()
    assert not at.exception
    # Another session asking for the same scan gets it without running it.
    other = open_app("sensitivity")
    other.multiselect(key="sensitivity.ratios").set_value([50]).run()
    other.button[0].click().run(timeout=5)
    assert not other.exception
    assert "sensitivity.chart" in _charts(other)


def test_sensitivity_page_measures_latency_curves_for_structured_methods() -> None:
    at = open_app("sensitivity")
    at.selectbox(key="sensitivity.method").set_value("l1-structured").run()
    at.multiselect(key="sensitivity.ratios").set_value([50]).run()
    at.button[0].click().run(timeout=600)
    at.toggle(key="sensitivity.round8").set_value(True).run()
    at.button(key="sensitivity.latency").click().run(timeout=600)
    assert not at.exception
    assert _charts(at)[-1] == "sensitivity.latency_chart"


def test_export_page_builds_bundle_and_command() -> None:
    at = open_app("prune")
    at.slider(key="prune.ratio.features.3").set_value(40).run()
    at.switch_page("pages/export.py").run()
    assert not at.exception
    assert '"features.3": 0.4' in at.code[0].value
    assert (
        at.code[1].value
        == "pruning-explorer export --model zoo:digits-cnn --plan plan.json --out export"
    )
    at.button[0].click().run(timeout=120)
    assert not at.exception, at.exception
    labels = {b.proto.label for b in at.get("download_button")}
    assert {
        "plan.json",
        "bundle.zip",
        "model.onnx",
        "model_state.pt",
        "metrics.json",
        "report.html",
    } <= labels
