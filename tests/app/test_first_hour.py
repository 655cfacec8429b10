"""A new user's first hour (issue 15), one AppTest per fix: nothing lost on a reload or a restart,
plans and commands that name uploads by their own names, the recovered model exported with its
numbers, nothing misleading, and state kept across pages and widgets."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from apphelpers import APP, ROOT, metrics, open_app
from streamlit.testing.v1 import AppTest

from explorer.data import load_data
from explorer.plan import LayerRule, PruningPlan
from explorer.sensitivity import scan
from explorer.sessions import uploads_dir

MODEL_UPLOAD, DATA_UPLOAD = "model.upload_model", "model.upload_data"


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The engineer's own files: a residual CNN saved with torch.export.save, and an .npz with a
    training split but no validation split."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from residual_net import residual_net

    root = tmp_path_factory.mktemp("first-hour")
    data = load_data("zoo:digits-32")
    assert data.train is not None and data.train.y is not None
    model = residual_net()
    program = torch.export.export(
        model, (data.test.x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, root / "mynet.pt2")
    buf = io.BytesIO()
    np.savez(
        buf,
        x=data.test.x.numpy()[:200],
        y=data.test.y.numpy()[:200],
        x_train=data.train.x.numpy()[:256],
        y_train=data.train.y.numpy()[:256],
    )
    return {"mynet.pt2": (root / "mynet.pt2").read_bytes(), "digits.npz": buf.getvalue()}


def _session_id(at: AppTest) -> str:
    value = at.query_params["session"]
    return value[0] if isinstance(value, list) else value


def _reload(at: AppTest, page: str | None = None) -> AppTest:
    """A new browser session on the same address (a reload, a second tab, a restarted server)."""
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["session"] = _session_id(at)
    again.run()
    assert not again.exception, again.exception
    if page:
        again.switch_page(f"pages/{page}.py").run()
        assert not again.exception, again.exception
    return again


def _upload(at: AppTest, files: dict[str, bytes]) -> AppTest:
    at.radio(key="model.source").set_value("Your own").run()
    at.file_uploader(key=MODEL_UPLOAD).upload("mynet.pt2", files["mynet.pt2"])
    at.file_uploader(key=DATA_UPLOAD).upload("digits.npz", files["digits.npz"])
    at.button[0].click().run(timeout=180)
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def test_a_reload_brings_back_model_plan_history_scans_and_recovery(
    user_files: dict[str, bytes],
) -> None:
    at = _upload(open_app(), user_files)
    at.switch_page("pages/prune.py").run()
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    at.slider(key="prune.ratio.stages.1.conv.0").set_value(50).run()
    at.slider(key="prune.ratio.stages.2.reduce.0").set_value(25).run()
    assert not at.exception and not at.error
    at.switch_page("pages/sensitivity.py").run()
    at.multiselect(key="sensitivity.ratios").set_value([50]).run()
    at.button[0].click().run(timeout=300)
    at.switch_page("pages/recover.py").run()
    at.slider(key="recover.epochs").set_value(1).run()
    at.button(key="recover.run").click().run(timeout=300)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    history = [e["summary"] for e in at.session_state["history"]]

    again = _reload(at, "prune")
    assert [c.value for c in again.sidebar.code] == [
        "mynet.pt2 (uploaded)",
        "digits.npz (uploaded)",
    ]
    assert again.selectbox(key="prune.method").value == "l1-structured"
    assert again.slider(key="prune.ratio.stages.1.conv.0").value == 50
    assert [e["summary"] for e in again.session_state["history"]] == history
    again.switch_page("pages/sensitivity.py").run()
    assert "sensitivity.chart" in [
        c.key for c in again.get("plotly_chart")
    ]  # from the cache on disk
    again.switch_page("pages/recover.py").run()
    assert again.slider(key="recover.epochs").value == 1  # the last run's settings
    assert again.dataframe[0].value.equals(table)  # its numbers, without running it again


def test_model_page_lists_recent_sessions_and_resumes_one() -> None:
    first = open_app("prune")
    first.slider(key="prune.ratio.features.7").set_value(35).run()
    sid = _session_id(first)
    other = open_app()
    assert not other.session_state["history"]
    buttons = [b for b in other.button if b.key == f"model.resume.{sid}"]
    assert buttons, "the first session is not offered"
    buttons[0].click().run()
    assert not other.exception
    assert _session_id(other) == sid
    assert [e["summary"] for e in other.session_state["history"]] == [
        e["summary"] for e in first.session_state["history"]
    ]
    other.switch_page("pages/prune.py").run()
    assert other.slider(key="prune.ratio.features.7").value == 35


def test_an_unknown_session_id_starts_a_new_session() -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["session"] = "no-such-session-0"
    at.run()
    assert not at.exception
    assert any("no saved session" in i.value for i in at.info)
    assert _session_id(at) != "no-such-session-0"


def test_export_carries_the_recovered_model_and_its_numbers(tmp_path: Path) -> None:
    at = open_app("prune")
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    at.slider(key="prune.ratio.features.7").set_value(50).run()
    at.slider(key="prune.ratio.features.11").set_value(50).run()
    at.switch_page("pages/recover.py").run()
    at.slider(key="recover.epochs").set_value(1).run()
    at.selectbox(key="recover.int8").set_value("dynamic").run()
    at.button(key="recover.run").click().run(timeout=300)
    rows = at.dataframe[0].value
    tuned = float(rows.loc[rows.stage == "fine-tuned", "accuracy"].iloc[0]) / 100
    int8 = float(rows.loc[rows.stage.str.startswith("int8"), "accuracy"].iloc[0]) / 100
    pruned = float(rows.loc[rows.stage == "pruned", "accuracy"].iloc[0]) / 100

    at.switch_page("pages/export.py").run()
    assert at.radio(key="export.what").value == "recovered"
    label = at.radio(key="export.what").format_func("recovered")
    assert (
        "fine-tuned 1 epoch(s)" in label
        and f"{100 * tuned:.2f} %" in label
        and f"{100 * int8:.2f} %" in label
    )
    command = next(c.value for c in at.code if c.value.startswith("pruning-explorer export"))
    assert "--finetune-epochs 1" in command and "--quantize int8 --int8-mode dynamic" in command
    at.button(key="export.build").click().run(timeout=300)
    assert not at.exception and not at.error
    files = {b.proto.label: b for b in at.get("download_button")}
    assert {"model.onnx", "model.int8.onnx", "metrics.json", "report.html", "bundle.zip"} <= set(
        files
    )
    import ui.cache

    plan = PruningPlan.from_json(at.code[0].value)
    bundle = ui.cache.cached_bundle(
        "zoo:digits-cnn",
        None,
        plan,
        next(iter(at.session_state["recover.results"].values())),
        ("zoo:digits-cnn", None),
    )
    assert bundle is not None
    m = json.loads(bundle["metrics.json"])
    assert m["accuracy"] == pytest.approx(tuned, abs=1e-9)  # the fine-tuned weights, measured again
    assert m["int8"]["accuracy"] == pytest.approx(int8, abs=1e-9)
    assert m["recovery"]["recalibrated"] and m["recovery"]["history"]
    assert b"Fine-tuning" in bundle["report.html"]
    with zipfile.ZipFile(io.BytesIO(bundle["bundle.zip"])) as z:
        assert "model.int8.onnx" in z.namelist()
    # The plan alone is still there, not recovered.
    at.radio(key="export.what").set_value("plan").run()
    at.button(key="export.build").click().run(timeout=300)
    alone = ui.cache.cached_bundle("zoo:digits-cnn", None, plan, None, ("zoo:digits-cnn", None))
    assert alone is not None
    assert json.loads(alone["metrics.json"])["accuracy"] == pytest.approx(pruned, abs=1e-9)
    assert "model.int8.onnx" not in alone


def test_plans_reports_and_commands_name_uploads_by_their_file_names(
    user_files: dict[str, bytes],
) -> None:
    at = _upload(open_app(), user_files)
    at.switch_page("pages/prune.py").run()
    at.slider(key="prune.ratio.stages.0.conv.0").set_value(30).run()
    at.switch_page("pages/export.py").run()
    assert not at.exception
    plan = json.loads(at.code[0].value)
    assert plan["model"] == "mynet.pt2"
    command = next(c.value for c in at.code if c.value.startswith("pruning-explorer export"))
    assert (
        command == "pruning-explorer export --model mynet.pt2 --data digits.npz --plan plan.json "
        "--out export"
    )
    assert any("`mynet.pt2` and `digits.npz`" in c.value for c in at.caption)
    at.button(key="export.build").click().run(timeout=300)
    assert not at.exception and not at.error
    import ui.cache

    bundle = ui.cache.cached_bundle(
        at.session_state["model_spec"],
        at.session_state["data_spec"],
        PruningPlan.from_dict(plan),
        None,
        ("mynet.pt2", "digits.npz"),
    )
    assert bundle is not None
    server_path = str(uploads_dir())
    for name in ("plan.json", "metrics.json", "report.html"):
        text = bundle[name].decode()
        assert server_path not in text and "explorer-upload-" not in text, name
        assert "mynet.pt2" in text, name
    assert json.loads(bundle["metrics.json"])["data"] == "digits.npz"


def test_recover_runs_bn_recalibration_on_a_pt2_model_and_charts_without_validation(
    user_files: dict[str, bytes],
) -> None:
    at = _upload(open_app(), user_files)
    at.switch_page("pages/prune.py").run()
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    at.slider(key="prune.ratio.stages.1.conv.0").set_value(50).run()
    at.switch_page("pages/recover.py").run()
    assert at.checkbox(key="recover.bn").value and not at.checkbox(key="recover.bn").disabled
    at.slider(key="recover.epochs").set_value(2).run()
    at.button(key="recover.run").click().run(timeout=300)
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["stage"]) == [
        "dense",
        "pruned",
        "BN recalibrated",
        "fine-tuned",
    ]
    curve = next(c for c in at.get("plotly_chart") if c.key == "recover.curve")
    spec = json.loads(curve.proto.spec)
    assert [t["name"] for t in spec["data"]] == ["training loss"]
    assert len(spec["data"][0]["x"]) == 2  # epochs 1 and 2
    assert "No validation split" in spec["layout"]["title"]["text"]


def test_an_interrupted_recover_run_says_cancelled() -> None:
    at = open_app("prune")
    at.slider(key="prune.ratio.features.7").set_value(50).run()
    at.switch_page("pages/recover.py").run()
    at.session_state["recover.running"] = (
        "a run that a click interrupted"  # what Cancel leaves behind
    )
    at.run()
    assert any(w.value.startswith("Cancelled") for w in at.warning)
    at.run()
    assert not any(w.value.startswith("Cancelled") for w in at.warning)  # said once


def test_weights_page_keeps_the_method_when_the_layer_changes() -> None:
    at = open_app("weights")
    at.selectbox(key="weights.method").set_value("l2-structured").run()
    at.selectbox(key="weights.layer").set_value("features.7").run()
    assert not at.exception
    assert at.selectbox(key="weights.method").value == "l2-structured"


def test_global_scope_sliders_show_each_layers_real_share() -> None:
    import ui.cache

    at = open_app("prune")
    at.radio(key="prune.scope").set_value("global").run()
    at.slider(key="prune.global").set_value(60).run()
    assert not at.exception
    subject = ui.cache.subject("zoo:digits-cnn", None)
    names = subject.layer_names
    pruned = dict(
        subject.prune(
            PruningPlan(
                "l1-unstructured", {n: LayerRule(0.6) for n in names}, scope="global", ratio=0.6
            )
        ).named_modules()
    )
    shares = {
        n: 1 - int(torch.count_nonzero(pruned[n].weight)) / pruned[n].weight.numel() for n in names
    }
    assert (
        len({round(v, 2) for v in shares.values()}) > 1
    )  # global ranking does not prune layers alike
    for name, share in shares.items():
        slider = at.slider(key=f"prune.ratio.{name}")
        assert slider.disabled and slider.value == min(95, round(100 * share)), name
        assert f"{100 * share:.1f} % in the global ranking" in slider.label
    at.radio(key="prune.scope").set_value("local").run()
    assert at.slider(key="prune.ratio.features.0").value == 60  # back to the draft's own ratios


def test_cards_at_zero_pruning_show_no_change_and_a_broken_plan_is_flagged() -> None:
    at = open_app("prune")
    cards = {m.label: m for m in at.metric}
    assert cards["Latency, p90"].proto.delta in (
        "",
        "0",
    )  # the dense model against itself, timed alike
    at.radio(key="prune.scope").set_value("global").run()
    at.slider(key="prune.global").set_value(95).run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("near chance" in w or "points below dense" in w for w in warnings), warnings
    assert any("Recover page" in w for w in warnings)


def _frame(at: AppTest, column: str):  # noqa: ANN202
    """The dataframe on the page that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_compare_two_configurations_with_the_curves_prediction() -> None:
    import ui.cache

    at = open_app("prune")
    at.slider(key="prune.ratio.features.3").set_value(50).run()
    at.slider(key="prune.ratio.features.7").set_value(50).run()
    assert metrics(at)
    table = _frame(at, "")
    assert "no scan of l1-unstructured" in table.loc[1, "B"]
    at.switch_page("pages/sensitivity.py").run()
    at.multiselect(key="sensitivity.ratios").set_value([50]).run()
    at.button[0].click().run(timeout=600)
    at.switch_page("pages/prune.py").run()
    at.selectbox(key="prune.compare.a").set_value(1).run()
    at.selectbox(key="prune.compare.b").set_value(2).run()
    assert not at.exception
    subject = ui.cache.subject("zoo:digits-cnn", None)
    curves = scan(subject, "l1-unstructured", [0.5])
    dense = float(curves.loc[curves.ratio == 0, "accuracy"].iloc[0])
    drop = {r.layer: dense - r.accuracy for r in curves[curves.ratio == 0.5].itertuples()}
    want_b = dense - max(drop["features.3"], 0) - max(drop["features.7"], 0)
    table = _frame(at, "")
    assert table.loc[1, "B"] == f"{100 * want_b:.2f}"
    measured_b = at.session_state["history"][1]["metrics"]["accuracy"]
    assert table.loc[2, "B"] == f"{100 * (measured_b - want_b):+.2f}"
    ratios = _frame(at, "A (%)").set_index("layer")
    assert ratios.loc["features.7", "A (%)"] == 0 and ratios.loc["features.7", "B (%)"] == 50
    rows = _frame(at, "metric").set_index("metric")
    assert rows.loc["nonzero parameters", "B - A"] == f"{-round(0.5 * 73_728):+,}"
