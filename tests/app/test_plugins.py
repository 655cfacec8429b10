"""A criterion and an allocation target that live in their own files (tests/plugins/) appear in
every page and in the CLI, with no other file changed: they are registered by being imported from
$PRUNING_EXPLORER_PLUGINS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apphelpers import ROOT, metrics, open_app

from explorer.allocate import targets
from explorer.methods import available_methods, unregister
from explorer.plugins import PLUGINS_ENV, forget_plugin

PLUGINS = [
    str(ROOT / "tests" / "plugins" / "toy_criterion.py"),
    str(ROOT / "tests" / "plugins" / "toy_target.py"),
]
TOY_METHOD, TOY_TARGET = "toy-largest-first", "params"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(PLUGINS_ENV, ",".join(PLUGINS))
    yield
    unregister(TOY_METHOD)
    targets.unregister(TOY_TARGET)
    for spec in PLUGINS:
        forget_plugin(spec)


def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, PLUGINS_ENV: ",".join(PLUGINS)}
    return subprocess.run(
        [sys.executable, "-m", "explorer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=600,
    )


def test_the_cli_offers_and_runs_the_plugins(tmp_path: Path) -> None:
    helped = _cli("allocate", "--help", tmp=tmp_path)
    assert helped.returncode == 0 and f"--target-{TOY_TARGET}" in helped.stdout
    scanned = _cli(
        "sensitivity",
        "--model",
        "zoo:digits-mlp",
        "--method",
        TOY_METHOD,
        "--ratios",
        "0.5",
        "--out",
        "curves.csv",
        tmp=tmp_path,
    )
    assert scanned.returncode == 0, scanned.stderr
    assert (tmp_path / "curves.csv").read_text().count(
        "\n"
    ) == 1 + 3 * 2  # header + (dense, 0.5) per layer
    accuracy = {}
    for method in (TOY_METHOD, "l1-unstructured"):
        plan = {
            "format": "pruning-explorer/plan",
            "version": 1,
            "method": method,
            "scope": "local",
            "layers": {"hidden.0": 0.5, "hidden.2": 0.5},
        }  # plain JSON: the toy is not registered here
        (tmp_path / f"{method}.json").write_text(json.dumps(plan))
        done = _cli(
            "evaluate",
            "--model",
            "zoo:digits-mlp",
            "--plan",
            f"{method}.json",
            "--json",
            tmp=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        accuracy[method] = json.loads(done.stdout)["accuracy"]
    assert accuracy[TOY_METHOD] < accuracy["l1-unstructured"]  # the largest weights matter most
    allocated = _cli(
        "allocate",
        "--model",
        "zoo:digits-mlp",
        f"--target-{TOY_TARGET}",
        "0.6",
        "--out",
        "plan.json",
        tmp=tmp_path,
    )
    assert allocated.returncode in (0, 1), allocated.stderr  # 1: measured but missed
    assert "of the dense params" in allocated.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["method"] == "l1-structured"


def test_every_page_offers_the_plugins(plugins: None) -> None:
    assert TOY_METHOD in available_methods()
    at = open_app("weights")
    assert TOY_METHOD in at.selectbox(key="weights.method").options
    at.selectbox(key="weights.method").set_value(TOY_METHOD).run()
    assert not at.exception
    at.switch_page("pages/sensitivity.py").run()
    assert TOY_METHOD in at.selectbox(key="sensitivity.method").options
    at.switch_page("pages/prune.py").run()
    assert TOY_METHOD in at.selectbox(key="prune.method").options
    target_labels = at.selectbox(key="prune.alloc.kind").options
    assert any("parameters" in label for label in target_labels)
    at.selectbox(key="prune.method").set_value(TOY_METHOD).run()
    at.slider(key="prune.ratio.features.11").set_value(50).run()
    assert not at.exception
    assert metrics(at)["Nonzero params"] == f"{390_890 - 294_912 // 2:,}"
