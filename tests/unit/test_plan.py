"""The plan contract: plain versioned JSON, round trips, and every malformed plan rejected with a
PlanError that names the bad value."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from explorer.errors import PlanError, UnknownMethodError
from explorer.methods import available_methods
from explorer.plan import FORMAT, VERSION, LayerRule, PruningPlan


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": "zoo:digits-cnn",
        "method": "l1-unstructured",
        "scope": "local",
        "layers": {"features.0": 0.3, "classifier": {"ratio": 0.5, "method": "l2-structured"}},
    }
    doc.update(over)
    return doc


def test_contract_example_parses() -> None:
    plan = PruningPlan.from_json(json.dumps(_doc()))
    assert (
        plan.method == "l1-unstructured"
        and plan.scope == "local"
        and plan.model == "zoo:digits-cnn"
    )
    assert plan.layers["features.0"] == LayerRule(0.3)
    assert plan.layers["classifier"] == LayerRule(0.5, "l2-structured")
    assert plan.method_of("features.0") == "l1-unstructured"
    assert plan.method_of("classifier") == "l2-structured"


@pytest.mark.parametrize("method", available_methods())
def test_json_round_trip(method: str, tmp_path: Path) -> None:
    other = next(m for m in available_methods() if m != method)
    plan = PruningPlan(
        method=method,
        model="tests/models/unseen.py:mobilenet",
        layers={
            "a.0": LayerRule(0.0),
            "b": LayerRule(0.25),
            "c.conv": LayerRule(0.999, other),
            "d": LayerRule(0.5, method),
        },
    )
    assert PruningPlan.from_json(plan.to_json()) == PruningPlan.from_dict(plan.to_dict())
    again = PruningPlan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict() and again.key() == plan.key()
    assert again.method_of("c.conv") == other and again.method_of("d") == method
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()
    # plain JSON with the contract's header
    raw = json.loads((tmp_path / "plan.json").read_text())
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["layers"]["b"] == 0.25


def test_global_plan_round_trip() -> None:
    plan = PruningPlan(
        method="l1-unstructured",
        scope="global",
        ratio=0.6,
        layers={"features.0": LayerRule(0.0), "features.3": LayerRule(0.0)},
    )
    d = plan.to_dict()
    assert d["scope"] == "global" and d["ratio"] == 0.6
    assert PruningPlan.from_dict(d) == plan
    assert not plan.is_empty


def test_global_plan_needs_ratio_and_one_method() -> None:
    with pytest.raises(PlanError, match="ratio"):
        PruningPlan.from_dict(_doc(scope="global", layers={"a": 0.0}))
    with pytest.raises(PlanError, match="'a'"):
        PruningPlan.from_dict(
            _doc(scope="global", ratio=0.5, layers={"a": {"ratio": 0.0, "method": "2:4"}})
        )
    with pytest.raises(PlanError, match="global"):  # a top-level ratio on a local plan
        PruningPlan.from_dict(_doc(ratio=0.5))
    with pytest.raises(PlanError, match="1.5"):
        PruningPlan.from_dict(_doc(scope="global", ratio=1.5, layers={"a": 0.0}))


def test_key_is_stable_under_layer_order() -> None:
    a = PruningPlan(
        method="2:4", layers={"x": LayerRule(0.5), "y": LayerRule(0.2, "l1-structured")}
    )
    b = PruningPlan(
        method="2:4", layers={"y": LayerRule(0.2, "l1-structured"), "x": LayerRule(0.5)}
    )
    assert a.key() == b.key()
    assert (
        PruningPlan.from_json(json.dumps(_doc())).key()
        == PruningPlan.from_json(
            json.dumps(_doc(layers=dict(reversed(list(_doc()["layers"].items())))))
        ).key()
    )
    c = PruningPlan(
        method="2:4", layers={"x": LayerRule(0.5), "y": LayerRule(0.3, "l1-structured")}
    )
    assert a.key() != c.key()


@pytest.mark.parametrize(
    ("doc", "culprit"),
    [
        (_doc(extra=1), "extra"),
        (_doc(layers={"features.0": {"ratio": 0.3, "amount": 0.2}}), "amount"),
        (_doc(layers={"features.0": {"method": "2:4"}}), "ratio"),
        (_doc(format="something/else"), "something/else"),
        (_doc(format=None), "None"),
        (_doc(version=2), "2"),
        (_doc(version="1"), "'1'"),
        (_doc(scope="sideways"), "sideways"),
        (_doc(model=3), "3"),
        (_doc(layers=[["features.0", 0.3]]), "features.0"),
        (_doc(method=None), "None"),
    ],
)
def test_malformed_plans_are_rejected(doc: dict[str, Any], culprit: str) -> None:
    with pytest.raises(PlanError) as err:
        PruningPlan.from_dict(doc)
    assert culprit in str(err.value)


@pytest.mark.parametrize(
    "ratio",
    [
        1.0,
        1.5,
        -0.1,
        -1e-9,
        100,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
        "0.5",
        None,
        [0.5],
    ],
)
def test_bad_ratios_are_rejected(ratio: Any) -> None:
    with pytest.raises(PlanError) as err:
        PruningPlan.from_dict(_doc(layers={"features.0": ratio}))
    assert "features.0" in str(err.value) and repr(ratio) in str(err.value)
    with pytest.raises(PlanError) as err:
        PruningPlan.from_dict(_doc(layers={"features.0": {"ratio": ratio}}))
    assert repr(ratio) in str(err.value)
    if isinstance(ratio, float):
        with pytest.raises(PlanError):
            PruningPlan(method="l1-unstructured", layers={"features.0": LayerRule(ratio)})


def test_nan_in_json_text_is_rejected() -> None:
    text = json.dumps(_doc()).replace("0.3", "NaN")
    with pytest.raises(PlanError, match="nan"):
        PruningPlan.from_json(text)


@pytest.mark.parametrize("ratio", [0, 0.0, 0.5, 0.999999])
def test_good_ratios_are_accepted(ratio: float) -> None:
    assert (
        PruningPlan.from_dict(_doc(layers={"features.0": ratio})).layers["features.0"].ratio
        == ratio
    )


@pytest.mark.parametrize("where", ["top", "layer"])
def test_unknown_method_lists_valid_names(where: str) -> None:
    doc = (
        _doc(method="l3-magic")
        if where == "top"
        else _doc(layers={"a": {"ratio": 0.1, "method": "l3-magic"}})
    )
    with pytest.raises(UnknownMethodError) as err:
        PruningPlan.from_dict(doc)
    message = str(err.value)
    assert "l3-magic" in message
    assert all(name in message for name in available_methods())
    assert isinstance(err.value, PlanError)  # the CLI and pages catch PlanError / ExplorerError


def test_unknown_layers_are_rejected_with_the_valid_names() -> None:
    plan = PruningPlan.from_dict(_doc(layers={"features.0": 0.3, "features.99": 0.1}))
    plan.check_layers(["features.0", "features.99"])  # known: fine
    with pytest.raises(PlanError) as err:
        plan.check_layers(["features.0", "features.3", "classifier"])
    assert "features.99" in str(err.value) and "features.3" in str(err.value)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"plan"', "null", b"\xff\xfe"])
def test_not_a_json_object(text: str | bytes) -> None:
    with pytest.raises(PlanError):
        PruningPlan.from_json(text)


def test_load_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="missing.json"):
        PruningPlan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_doc(version=7)))
    with pytest.raises(PlanError, match=r"bad\.json.*7"):
        PruningPlan.load(bad)


def test_uniform_and_empty() -> None:
    plan = PruningPlan.uniform("l1-structured", ["a", "b"], 0.5, model="zoo:digits-mlp")
    assert (
        plan.layers == {"a": LayerRule(0.5), "b": LayerRule(0.5)} and plan.model == "zoo:digits-mlp"
    )
    assert not plan.is_empty
    assert PruningPlan.uniform("l1-structured", ["a"], 0.0).is_empty
    assert PruningPlan(method="2:4").is_empty
    assert math.isclose(PruningPlan.from_dict(plan.to_dict()).layers["b"].ratio, 0.5)


# --- round_to ------------------------------------------------------------------------------------


def test_round_to_round_trips_and_a_plan_without_it_is_unchanged(tmp_path: Path) -> None:
    plain = PruningPlan(
        method="l1-structured", model="zoo:digits-cnn", layers={"features.3": LayerRule(0.3)}
    )
    text = plain.to_json()
    assert "round_to" not in text
    assert PruningPlan.from_json(text).to_json() == text  # byte for byte
    rounded = plain.with_round_to(16)
    d = rounded.to_dict()
    assert d["round_to"] == 16 and list(d)[-1] == "round_to"  # appended after the contract's keys
    again = PruningPlan.from_json(rounded.to_json())
    assert again == rounded and again.round_to == 16 and again.key() == rounded.key() != plain.key()
    rounded.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").to_json() == rounded.to_json()
    # A mixed plan rounds its structured layers: valid when any layer's method removes channels.
    mixed = PruningPlan.from_dict(_doc(round_to=8))
    assert mixed.round_to == 8 and mixed.method == "l1-unstructured"


@pytest.mark.parametrize(
    ("value", "culprit"),
    [(0, "0"), (-8, "-8"), (8.0, "8.0"), ("8", "'8'"), (True, "True"), (2048, "2048")],
)
def test_bad_round_to_is_rejected(value: Any, culprit: str) -> None:
    with pytest.raises(PlanError, match=f"round_to.*{culprit}"):
        PruningPlan.from_dict(_doc(round_to=value))


def test_round_to_needs_a_local_plan_that_removes_channels() -> None:
    with pytest.raises(PlanError, match="removes no channels"):
        PruningPlan.from_dict(_doc(layers={"features.0": 0.3}, round_to=8))
    with pytest.raises(PlanError, match="local"):
        PruningPlan.from_dict(
            _doc(method="l1-structured", scope="global", ratio=0.3, layers={"a": 0.0}, round_to=8)
        )
