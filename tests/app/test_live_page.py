"""The Prune page on a 224-px model, evaluated in the background: the page is drawn before the
evaluation ends (partial cards, labelled), later runs show the full evaluation and the history
takes it once."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
from apphelpers import ROOT, metrics, open_app

MODELS = ROOT / "tests" / "models" / "realsize.py"


def _write_data(path: Path, n: int) -> Path:
    spec = importlib.util.spec_from_file_location("_realsize_app", MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_data(path, n)


def test_a_slider_on_a_224_px_model_is_evaluated_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "PRUNING_EXPLORER_LIVE_INLINE_SECONDS", "0"
    )  # never wait for the full evaluation
    data = str(_write_data(tmp_path / "images.npz", 48))
    at = open_app()
    at.radio(key="model.source").set_value("Your own").run()
    at.text_input[0].input(f"{MODELS}:narrow_resnet")
    at.text_input[1].input(data)
    at.button[0].click().run()
    assert not at.exception and not at.error, at.error
    at.switch_page("pages/prune.py").run()
    assert not at.exception
    at.slider(key="prune.ratio.layer2.0.conv1").set_value(40).run()
    assert not at.exception and not at.error
    # Drawn before the evaluation ended (a busy machine may not even have scored the first images).
    assert not at.session_state["history"]
    deadline = time.monotonic() + 300
    while not at.session_state["history"] and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()  # a later rerun (the fragment's, in the browser) shows the full evaluation
        assert not at.exception
    assert [e["summary"] for e in at.session_state["history"]] == [
        "l1-unstructured: layer2.0.conv1 40%"
    ]
    final = metrics(at)
    assert "Agreement" in final and "Agreement (so far)" not in final
    assert final["Latency, median"].endswith(" ms")
    at.run()
    assert len(at.session_state["history"]) == 1  # recorded once
