"""Whole blocks removed (``explorer.blocks``, ``explorer.sensitivity.block_scan``, the plan's
``"blocks"``): which modules are blocks, removal against an oracle (the block's output replaced by
its input with a forward hook), the plan contract, the scan against a direct evaluation, the CLI.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.blocks import Skipped, find_blocks, remove_blocks, why_no_blocks
from explorer.cli import main
from explorer.errors import PlanError
from explorer.evaluate import evaluate_torch
from explorer.inspect import count_macs
from explorer.plan import LayerRule, PruningPlan
from explorer.runtime import OrtModel, export_onnx
from explorer.sensitivity import block_scan
from explorer.subject import Subject
from explorer.tolerance import REL_TOL, relative_error

MODELS = Path(__file__).resolve().parents[1] / "models"


def _realsize():  # noqa: ANN202
    name = "_realsize_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MODELS / "realsize.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _identity_hooked(model: nn.Module, block: str) -> nn.Module:
    """The oracle: a copy of ``model`` whose block ``block`` still runs but whose output is
    replaced by its input (what removing the block means), by a forward hook."""
    oracle = copy.deepcopy(model).eval()
    oracle.get_submodule(block).register_forward_hook(lambda m, args, out: args[0])
    return oracle


# --- which modules are blocks ---------------------------------------------------------------------


def test_resnet18_blocks_are_the_basic_blocks_without_downsampling() -> None:
    model = _realsize().resnet18()
    x = torch.rand(1, 3, 64, 64)
    names = [b.name for b in find_blocks(model, x)]
    # layerN.0 of stages 2-4 downsample (their shortcut is a projection): they cannot go.
    assert names == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    block = find_blocks(model, x)[0]
    assert block.type == "BasicBlock"
    assert block.layers == ("layer1.0.conv1", "layer1.0.conv2")
    assert block.params == sum(p.numel() for p in model.layer1[0].parameters())


def test_mobilenet_v2_blocks_are_the_inverted_residuals_with_a_skip() -> None:
    model = _realsize().mobilenet_v2()
    x = torch.rand(1, 3, 64, 64)
    blocks = find_blocks(model, x)
    skips = [
        n for n, m in model.named_modules() if type(m).__name__ == "InvertedResidual" and m.use_res
    ]
    assert [b.name for b in blocks] == skips and len(skips) == 10


def test_zoo_blocks_and_the_reason_where_there_are_none() -> None:
    resnet = Subject("zoo:digits-resnet")
    assert [b.name for b in resnet.blocks] == ["layer1.0", "layer1.1", "layer2.1"]
    cnn = Subject("zoo:digits-cnn")
    assert cnn.blocks == ()
    assert "adds its own input" in why_no_blocks(cnn.model)


def test_a_flat_graph_has_no_block_and_says_how_to_get_them(tmp_path: Path) -> None:
    model = _realsize().narrow_resnet()
    x = torch.rand(2, 3, 32, 32)
    path = tmp_path / "resnet.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    np.savez(tmp_path / "x.npz", x=x.numpy())
    subject = Subject(str(path), str(tmp_path / "x.npz"), runs=5)
    assert subject.blocks == ()
    assert "PATH.py:FUNC" in why_no_blocks(subject.model)
    with pytest.raises(PlanError, match="no removable block.*PATH.py:FUNC"):
        subject.prune(PruningPlan(method="l1-unstructured", blocks=("layer1.0",)))


def test_a_stage_of_blocks_is_no_block_but_a_shared_module_is_none_either() -> None:
    class Twice(nn.Module):  # the same residual block called twice: removing it is ambiguous
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4))
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(2):
                x = x + self.block(x)
            return self.head(x)

    assert find_blocks(Twice().eval(), torch.rand(2, 4)) == ()


def test_a_forward_that_fails_while_looked_at_has_no_block_and_says_why() -> None:
    class Exotic(nn.Module):  # e.g. code that refuses to run under a torch function mode
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch._C._len_torch_function_stack():
                raise RuntimeError("no function modes here")
            return x + self.block(x)

    model = Exotic().eval()
    assert find_blocks(model, torch.rand(2, 4)) == ()
    assert "looking for them failed (RuntimeError: no function modes here)" in why_no_blocks(model)


# --- removal --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["layer1.0", "layer2.1", "layer4.1"])
def test_removing_a_block_equals_replacing_its_output_by_its_input(block: str) -> None:
    model = _realsize().resnet18()
    x = torch.rand(2, 3, 64, 64)
    find_blocks(model, x)
    removed = copy.deepcopy(model)
    remove_blocks(removed, [block])
    assert isinstance(removed.get_submodule(block), Skipped)
    with torch.no_grad():
        assert torch.allclose(removed(x), _identity_hooked(model, block)(x), atol=1e-5, rtol=1e-5)
    gone = sum(p.numel() for p in model.get_submodule(block).parameters())
    assert sum(p.numel() for p in removed.parameters()) == (
        sum(p.numel() for p in model.parameters()) - gone
    )


def test_a_plan_removing_blocks_and_channels_exports_what_torch_computes(tmp_path: Path) -> None:
    subject = Subject("zoo:digits-resnet")
    plan = PruningPlan(
        method="l1-structured",
        layers={"layer2.0.conv1": LayerRule(0.5), "layer3.0.conv1": LayerRule(0.5)},
        blocks=("layer1.1", "layer2.1"),
    )
    pruned = subject.prune(plan)
    assert isinstance(pruned.layer1[1], Skipped) and isinstance(pruned.layer2[1], Skipped)
    assert pruned.layer2[0].conv1.out_channels == 32  # the channels went too
    x = subject.data.test.x[:16]
    path = export_onnx(pruned, subject.example_input, tmp_path / "p.onnx")
    with torch.no_grad():
        assert relative_error(OrtModel(path)(x.numpy()), pruned(x).numpy()) <= REL_TOL
    assert isinstance(subject.model.layer1[1], nn.Module) and not isinstance(
        subject.model.layer1[1], Skipped
    )  # the base model keeps its blocks
    dense_macs = subject.inventory.total_macs
    assert sum(count_macs(pruned, subject.example_input).values()) < dense_macs


def test_block_removal_is_measured_faster() -> None:
    subject = Subject("zoo:digits-resnet", runs=20)
    result = subject.evaluate(PruningPlan(method="l1-unstructured", blocks=("layer2.1",)))
    assert result.pruned.params_total < result.dense.params_total
    assert result.pruned.macs < result.dense.macs
    assert result.speedup is not None  # measured alternately with the dense model


def test_plan_blocks_validation_names_the_culprit() -> None:
    subject = Subject("zoo:digits-resnet")
    with pytest.raises(PlanError, match=r"unknown block\(s\) \['layer3.0'\].*layer1.0, layer1.1"):
        subject.prune(PruningPlan(method="l1-unstructured", blocks=("layer3.0",)))
    inside = PruningPlan(
        method="l1-unstructured",
        layers={"layer1.1.conv1": LayerRule(0.5)},
        blocks=("layer1.1",),
    )
    with pytest.raises(PlanError, match="'layer1.1.conv1' is inside block 'layer1.1'"):
        subject.prune(inside)
    at_zero = PruningPlan(
        method="l1-unstructured", layers={"layer1.1.conv1": LayerRule(0.0)}, blocks=("layer1.1",)
    )
    subject.prune(at_zero)  # a ratio of 0 asks nothing of the removed layer


# --- the plan contract ----------------------------------------------------------------------------


def test_plan_blocks_round_trip_and_plans_without_them_are_unchanged() -> None:
    plan = PruningPlan(
        method="l1-unstructured", layers={"fc": LayerRule(0.3)}, blocks=("layer1.1", "layer2.1")
    )
    data = json.loads(plan.to_json())
    assert data["blocks"] == ["layer1.1", "layer2.1"]
    assert PruningPlan.from_json(plan.to_json()) == plan
    assert not plan.is_empty and not PruningPlan(method="2:4", blocks=("a",)).is_empty
    plain = PruningPlan(method="l1-unstructured", layers={"fc": LayerRule(0.3)})
    assert "blocks" not in plain.to_dict()
    assert plan.with_blocks(None) == plain and plain.with_blocks(["layer1.1"]).blocks == (
        "layer1.1",
    )


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ("layer1.1", "must be a non-empty list"),
        ([], "must be a non-empty list"),
        ([3], "named by its module's name, got 3"),
        (["a", "a"], r"names \['a'\] more than once"),
    ],
)
def test_bad_plan_blocks_are_refused(blocks: object, match: str) -> None:
    raw = {
        "format": "pruning-explorer/plan",
        "version": 1,
        "method": "l1-unstructured",
        "layers": {},
        "blocks": blocks,
    }
    with pytest.raises(PlanError, match=match):
        PruningPlan.from_dict(raw)


# --- sensitivity ----------------------------------------------------------------------------------


def test_block_scan_points_equal_a_direct_evaluation() -> None:
    subject = Subject("zoo:digits-resnet")
    frame = block_scan(subject, cache=False)
    assert list(frame["layer"]) == [n for b in subject.blocks for n in (b.name, b.name)]
    assert list(frame["ratio"]) == [0.0, 1.0] * 3
    dense = frame[frame["ratio"] == 0]
    assert np.allclose(dense["accuracy"], subject.dense()[0].accuracy)
    test = subject.data.test
    for block in subject.blocks:
        row = frame[(frame["layer"] == block.name) & (frame["ratio"] == 1.0)].iloc[0]
        accuracy, loss = evaluate_torch(_identity_hooked(subject.model, block.name), test)
        # ONNX Runtime against PyTorch: at most one sample apart, the loss to float noise
        assert abs(row["accuracy"] - accuracy) <= 1 / len(test) + 1e-12
        assert row["loss"] == pytest.approx(loss, rel=1e-3)
        assert row["params"] == block.params
        assert row["members"] == ",".join(block.layers)
        macs = {layer.name: layer.macs for layer in subject.inventory.layers}
        assert row["macs"] == sum(macs[n] for n in block.layers)


def test_block_scan_is_cached_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    import explorer.sensitivity.blocks as blocks_module

    first = block_scan(Subject("zoo:digits-resnet"), ["layer2.1"])

    def measured(*args: object) -> None:
        raise AssertionError("a cached point was measured again")

    monkeypatch.setattr(blocks_module, "_removed", measured)
    again = block_scan(Subject("zoo:digits-resnet"), ["layer2.1"])
    assert again.equals(first)


def test_block_scan_refuses_models_without_blocks_and_unknown_names() -> None:
    with pytest.raises(PlanError, match="no removable block"):
        block_scan(Subject("zoo:digits-cnn"))
    with pytest.raises(PlanError, match=r"unknown block\(s\) \['stem'\]"):
        block_scan(Subject("zoo:digits-resnet"), ["stem"])


# --- the CLI --------------------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_blocks_scans_them_and_evaluates_a_plan_removing_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = _run(capsys, "layers", "--model", "zoo:digits-resnet", "--blocks", "--json")
    assert code == 0
    assert [b["name"] for b in json.loads(out)] == ["layer1.0", "layer1.1", "layer2.1"]
    code, out, _ = _run(capsys, "layers", "--model", "zoo:digits-resnet")
    assert code == 0 and "3 residual blocks can be removed whole" in out
    code, out, _ = _run(capsys, "layers", "--model", "zoo:digits-cnn", "--blocks")
    assert code == 0 and out.startswith("no removable block:")
    csv_path = tmp_path / "blocks.csv"
    code, _, _ = _run(
        capsys, "sensitivity", "--model", "zoo:digits-resnet", "--blocks", "--out", str(csv_path)
    )
    assert code == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "layer,ratio,accuracy,loss,members,params,macs" and len(rows) == 7
    plan = tmp_path / "plan.json"
    PruningPlan(method="l1-unstructured", blocks=("layer2.1",)).save(plan)
    code, out, _ = _run(
        capsys, "evaluate", "--model", "zoo:digits-resnet", "--plan", str(plan), "--json"
    )
    result = json.loads(out)
    assert code == 0 and result["params_total"] < result["dense"]["params_total"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--ratios", "0.5"], "takes no --method or --ratios"),
        (["--method", "l1-structured"], "takes no --method or --ratios"),
    ],
)
def test_cli_blocks_scan_refuses_ratios(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], match: str
) -> None:
    code, _, err = _run(
        capsys,
        "sensitivity",
        "--model",
        "zoo:digits-resnet",
        "--blocks",
        *argv,
        "--out",
        str(tmp_path / "b.csv"),
    )
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_cli_plan_with_an_unknown_block_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    PruningPlan(method="l1-unstructured", blocks=("layer9.9",)).save(plan)
    code, _, err = _run(capsys, "evaluate", "--model", "zoo:digits-resnet", "--plan", str(plan))
    assert code == 2 and "layer9.9" in err and "Traceback" not in err


# --- where blocks cannot go, and the live prediction ----------------------------------------------


def test_schedules_in_steps_and_converters_refuse_blocks_naming_them() -> None:
    from explorer.convert import to_nni, to_torch_pruning
    from explorer.errors import ScheduleError
    from explorer.schedule_spec import ScheduleSpec
    from explorer.schedules import run_schedule

    subject = Subject("zoo:digits-resnet")
    plan = PruningPlan(method="l1-structured", layers={"fc": LayerRule(0.0)}, blocks=("layer2.1",))
    with pytest.raises(ScheduleError, match=r"whole blocks \['layer2.1'\].*one-shot"):
        run_schedule(subject, plan, ScheduleSpec("iterative"))
    for convert in (to_nni, to_torch_pruning):
        with pytest.raises(PlanError, match=r"remove whole blocks.*\['layer2.1'\]"):
            convert(plan)


def test_the_live_prediction_adds_each_removed_blocks_measured_drop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from explorer.live import predicted_accuracy
    from explorer.sensitivity import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # only what this test measures is cached

    subject = Subject("zoo:digits-resnet")
    plan = PruningPlan(method="l1-unstructured", blocks=("layer1.1", "layer2.1"))
    frame = block_scan(subject, ["layer1.1", "layer2.1"])  # cached on disk
    dense = subject.dense()[0].accuracy
    removed = frame[frame["ratio"] == 1.0]
    want = max(0.0, dense - sum(dense - a for a in removed["accuracy"]))
    assert predicted_accuracy(subject, plan) == pytest.approx(want)
    assert predicted_accuracy(subject, plan.with_blocks(["layer1.0"])) is None  # not measured
