"""Converters: a plan to NNI's config_list and back is exact; bad config_list entries are refused
naming the entry; Torch-Pruning, run on the file we write, removes exactly the channels we do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch_pruning as tp

from explorer.cli import main
from explorer.convert import from_nni, to_nni, to_torch_pruning
from explorer.errors import PlanError
from explorer.methods import get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.subject import Subject

CNN = "zoo:digits-cnn"


def _plans(subj: Subject, method: str) -> list[PruningPlan]:
    """A local plan with repeated ratios and a global one, on the layers ``method`` can prune."""
    names = [n.name for n in subj.inventory.layers if n.group or not get_method(method).structured]
    ratios = [0.3, 0.5, 0.3, 0.125, 0.5]
    local = PruningPlan(
        method,
        {n: LayerRule(r) for n, r in zip(names, ratios, strict=False)},
        model=subj.model_spec,
    )
    glob = PruningPlan(
        method, {n: LayerRule(0.6) for n in names}, scope="global", ratio=0.6, model=subj.model_spec
    )
    return [local, glob]


def test_plan_to_nni_and_back_is_exact(method: str, subject: Callable[..., Subject]) -> None:
    subj = subject(CNN)
    for plan in _plans(subj, method):
        config = to_nni(plan)
        if plan.scope == "local":  # one entry per distinct ratio, op_names and sparse_ratio
            assert len(config) == len({r.ratio for r in plan.layers.values()})
            assert all(set(e) == {"op_names", "sparse_ratio"} for e in config)
        back = from_nni(json.loads(json.dumps(config)), subj.inventory, method, model=plan.model)
        assert back.to_dict() == plan.to_dict()


def test_round_trip_through_the_cli(tmp_path: Path, subject: Callable[..., Subject]) -> None:
    subj = subject(CNN)
    plan = _plans(subj, "l2-structured")[0]
    plan.save(tmp_path / "plan.json")
    assert (
        main(
            [
                "convert",
                "--plan",
                str(tmp_path / "plan.json"),
                "--to",
                "nni",
                "--out",
                str(tmp_path / "config.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                "--from",
                "nni",
                "--config",
                str(tmp_path / "config.json"),
                "--model",
                CNN,
                "--method",
                "l2-structured",
                "--out",
                str(tmp_path / "back.json"),
            ]
        )
        == 0
    )
    assert PruningPlan.load(tmp_path / "back.json").to_dict() == plan.to_dict()


def test_op_types_and_exclusions_select_layers(subject: Callable[..., Subject]) -> None:
    inv = subject(CNN).inventory
    legacy = [
        {"op_types": ["Conv2d"], "sparsity": 0.5},
        {"exclude": True, "op_names": ["features.0"]},
        {"op_names": ["classifier"], "sparse_ratio": 0.2},
    ]
    plan = from_nni(legacy, inv)
    assert plan.to_dict()["layers"] == {
        "features.3": 0.5,
        "features.7": 0.5,
        "features.11": 0.5,
        "classifier": 0.2,
    }
    v3 = [
        {
            "op_names_re": [r"features\.\d+"],
            "exclude_op_names": ["features.11"],
            "sparse_ratio": 0.4,
            "granularity": "out_channel",
        }
    ]
    plan = from_nni(v3, inv)
    assert plan.method == "l1-structured"  # out_channel granularity: channels removed
    assert plan.to_dict()["layers"] == {"features.0": 0.4, "features.3": 0.4, "features.7": 0.4}
    grouped = [
        {"op_types": ["Conv2d"], "total_sparsity": 0.7}
    ]  # legacy: ranked across the entry's layers
    plan = from_nni(grouped, inv)
    assert (
        plan.scope == "global"
        and plan.ratio == 0.7
        and list(plan.layers) == ["features.0", "features.3", "features.7", "features.11"]
    )


@pytest.mark.parametrize(
    ("config", "culprit"),
    [
        (
            [
                {"op_names": ["features.3"], "sparse_ratio": 0.5},
                {"op_names": ["conv9"], "sparse_ratio": 0.5},
            ],
            "entry 1: unknown layer(s) ['conv9']",
        ),
        (
            [{"op_names": ["features.3"], "sparse_ratio": 1.0}],
            "entry 0: 'sparse_ratio': ratio must be in [0, 1)",
        ),
        (
            [{"op_names": ["features.3"], "sparse_ratio": "half"}],
            "entry 0: 'sparse_ratio': ratio must be a number",
        ),
        (
            [{"op_names": ["features.3"], "sparse_threshold": 0.1}],
            "entry 0: 'sparse_threshold' is not supported",
        ),
        (
            [{"op_names": ["features.3"], "sparse_ratio": 0.5, "colour": "red"}],
            "entry 0: unknown key 'colour'",
        ),
        (
            [
                {"op_types": ["Conv2d"], "sparse_ratio": 0.5},
                {"op_names": ["features.3"], "sparse_ratio": 0.2},
            ],
            "entry 1: layer 'features.3' gets ratio 0.2, entry 0 gave it 0.5",
        ),
        (
            [{"op_names": ["features.3"], "sparse_ratio": 0.5, "exclude": True}],
            "entry 0: 'exclude' and a ratio",
        ),
        ([{"op_names": ["features.3"]}], "entry 0: no ratio"),
        ([{"sparse_ratio": 0.5}], "entry 0: selects no layer"),
        (["features.3"], "entry 0: must be an object"),
        (
            [{"op_names": "features.3", "sparse_ratio": 0.5}],
            "entry 0: 'op_names' must be a list of strings",
        ),
        (
            [{"op_names": ["features.3"], "sparse_ratio": 0.5, "granularity": [4, 4]}],
            "entry 0: granularity [4, 4]",
        ),
        (
            [{"op_names": ["features.3"], "target_settings": {"weight": {"sparse_ratio": 0.5}}}],
            "entry 0: 'target_settings' is not supported",
        ),
        (
            [
                {"op_names": ["features.3"], "sparse_ratio": 0.5, "global_group_id": "a"},
                {"op_names": ["features.7"], "sparse_ratio": 0.4, "global_group_id": "a"},
            ],
            "entry 1: global group 'a' has ratio 0.4 here and 0.5 in entry 0",
        ),
        (
            [{"op_names": ["classifier"], "sparse_ratio": 0.5, "granularity": "out_channel"}],
            "entry 0: layer 'classifier' cannot lose output channels",
        ),
    ],
)
def test_bad_entries_are_refused_naming_the_entry(
    config: list, culprit: str, subject: Callable[..., Subject]
) -> None:
    with pytest.raises(PlanError) as e:
        from_nni(config, subject(CNN).inventory)
    assert culprit in str(e.value), str(e.value)


def test_cli_refuses_a_bad_config_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps([{"op_names": ["conv9"], "sparse_ratio": 0.5}])
    )
    code = main(
        [
            "convert",
            "--from",
            "nni",
            "--config",
            str(tmp_path / "config.json"),
            "--model",
            CNN,
            "--out",
            str(tmp_path / "plan.json"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "config.json: config_list entry 0: unknown layer(s) ['conv9']" in err
        and len(err.splitlines()) == 1
    )


def _torch_pruning(subj: Subject, cfg: dict) -> torch.nn.Module:
    """Torch-Pruning run on a fresh copy of the model with the converted file, as its note says."""
    model = Subject(subj.model_spec).model
    model.requires_grad_(True)
    ratio_dict = {model.get_submodule(k): v for k, v in cfg["pruning_ratio_dict"].items()}
    p = 1 if "p=1" in cfg["importance"] else 2
    importance = tp.importance.GroupMagnitudeImportance(
        p=p, **({"normalizer": "mean"} if cfg["global_pruning"] else {})
    )
    tp.pruner.MetaPruner(
        model,
        subj.example_input,
        importance=importance,
        pruning_ratio=cfg["pruning_ratio"],
        pruning_ratio_dict=ratio_dict,
        global_pruning=cfg["global_pruning"],
        round_to=cfg["round_to"],
        ignored_layers=[model.get_submodule(n) for n in cfg["ignored_layers"]],
    ).step()
    return model


@pytest.mark.parametrize("spec", [CNN, "zoo:digits-resnet"])
@pytest.mark.parametrize("method", ["l1-structured", "l2-structured"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_torch_pruning_reproduces_the_plan(
    spec: str, method: str, scope: str, subject: Callable[..., Subject]
) -> None:
    """Oracle: Torch-Pruning with the file removes the channels we remove (at ratios whose channel
    counts are whole numbers: the note says how the two round otherwise)."""
    subj = subject(spec)
    names = [n.name for n in subj.inventory.layers if n.group]
    plan = (
        PruningPlan(method, {n: LayerRule(0.5) for n in names[::2]})
        if scope == "local"
        else PruningPlan(method, {n: LayerRule(0.25) for n in names}, scope="global", ratio=0.25)
    )
    cfg = to_torch_pruning(plan, subj.inventory)
    theirs = dict(_torch_pruning(subj, cfg).named_modules())
    ours = dict(subj.prune(plan).named_modules())
    for name in subj.layer_names:
        if scope == "local":
            assert torch.equal(ours[name].weight, theirs[name].weight), name
        else:  # the same channels kept per layer
            assert ours[name].weight.shape == theirs[name].weight.shape, name


def test_torch_pruning_refuses_zeros(subject: Callable[..., Subject]) -> None:
    plan = _plans(subject(CNN), "l1-unstructured")[0]
    with pytest.raises(PlanError, match="Torch-Pruning removes channels"):
        to_torch_pruning(plan)
    mixed = PruningPlan("l1-structured", {"features.3": LayerRule(0.5, "l2-structured")})
    with pytest.raises(PlanError, match=r"layer\(s\) \['features.3'\] use another method"):
        to_nni(mixed)


@pytest.mark.parametrize(
    ("method", "importance"),
    [
        ("l1-structured", "tp.importance.GroupMagnitudeImportance(p=1)"),
        ("l2-structured", "tp.importance.GroupMagnitudeImportance(p=2)"),
        ("taylor-structured", "tp.importance.GroupTaylorImportance()"),
        ("bn-scale-structured", "tp.importance.BNScaleImportance()"),
        ("flap-structured", None),
    ],
)
def test_torch_pruning_importance_follows_the_method(method: str, importance: str | None) -> None:
    cfg = to_torch_pruning(PruningPlan(method, {"features.0": LayerRule(0.5)}))
    assert cfg["importance"] == importance
    if importance is None:
        assert f"No Torch-Pruning importance ranks channels as {method} does" in cfg["note"]
    else:
        assert importance in cfg["note"]
    assert cfg["pruning_ratio_dict"] == {"features.0": 0.5}
