"""An ONNX file with ops the interpreter runs in ONNX Runtime, through every page as a user
would."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from apphelpers import ROOT, metrics, open_app

ORT_GRAPH = ROOT / "tests" / "models" / "ort_graph.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location("_ort_graph_app", ORT_GRAPH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write(tmp_path_factory.mktemp("ort-graph-app"))


def _ratio_sliders(at) -> list:  # noqa: ANN001
    return [s for s in at.slider if s.key.startswith("prune.ratio.")]


def test_ort_graph_on_every_page(files: tuple[Path, Path]) -> None:
    at = open_app()
    at.radio(key="model.source").set_value("Your own").run()
    # As a new user would: both files uploaded.
    at.file_uploader(key="model.upload_model").upload(files[0].name, files[0].read_bytes())
    at.file_uploader(key="model.upload_data").upload(files[1].name, files[1].read_bytes())
    at.button[0].click().run()
    assert not at.exception and not at.error, at.error
    assert [c.value for c in at.sidebar.code] == [
        "digits-ort.onnx (uploaded)",
        "digits-ort.npz (uploaded)",
    ]
    assert any(
        "runs in ONNX Runtime" in i.value and "com.microsoft.Gelu" in i.value for i in at.info
    )

    at.switch_page("pages/prune.py").run()
    assert not at.exception and not at.error
    at.slider(key="prune.ratio.fc1").set_value(80).run()
    assert not at.exception and not at.error
    assert "Accuracy" in metrics(at)
    history = len(at.session_state["history"])
    assert history >= 1
    # Structured methods: offered, labelled off, every slider disabled with the reason.
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    assert not at.exception
    assert "(off for this model)" in at.selectbox(key="prune.method").format_func("l1-structured")
    assert any(
        "off for this model" in w.value and "InstanceNormalization" in w.value for w in at.warning
    )
    assert all(s.disabled for s in _ratio_sliders(at))
    at.selectbox(key="prune.method").set_value("2:4").run()
    at.slider(key="prune.ratio.conv3").set_value(50).run()
    assert not at.exception and not at.error
    assert len(at.session_state["history"]) > history
    # Allocation: a MACs target needs a structured method; sparsity works.
    at.selectbox(key="prune.alloc.kind").set_value("macs").run()
    assert any("needs a structured method" in i.value for i in at.info)
    at.selectbox(key="prune.alloc.kind").set_value("sparsity").run()
    at.button(key="prune.allocate").click().run(timeout=120)
    assert not at.exception and not at.error
    at.button(key="prune.allocate.use").click().run()
    assert not at.exception and not at.error

    at.switch_page("pages/weights.py").run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) >= 2
    at.selectbox(key="weights.method").set_value("l2-structured").run()
    assert not at.exception and not at.error
    assert any("shows the dense layer" in i.value for i in at.info) and at.get("plotly_chart")

    at.switch_page("pages/sensitivity.py").run()
    at.selectbox(key="sensitivity.method").set_value("l2-structured").run()
    assert any("off for this model" in i.value for i in at.info)
    at.selectbox(key="sensitivity.method").set_value("l1-unstructured").run()
    at.button[0].click().run(timeout=120)
    assert not at.exception and not at.error
    assert list(at.session_state["scans"].values())[0]["method"] == "l1-unstructured"

    at.switch_page("pages/recover.py").run()
    assert not at.exception and not at.error
    assert any("Only int8 here" in i.value for i in at.info)
    assert at.slider(key="recover.epochs").disabled and at.slider(key="recover.epochs").value == 0
    at.selectbox(key="recover.int8").set_value("static").run()
    at.button(key="recover.run").click().run(timeout=180)
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["stage"]) == ["dense", "pruned", "int8 (static)"]

    at.switch_page("pages/export.py").run()
    assert (
        at.radio(key="export.what").value == "recovered"
    )  # the Recover page's int8 run is offered first
    at.button(key="export.build").click().run(timeout=180)
    assert not at.exception and not at.error
    labels = {b.proto.label for b in at.get("download_button")}
    assert "model.int8.onnx" in labels
    assert any("no model.pt2" in c.value and "ONNX Runtime" in c.value for c in at.caption)
