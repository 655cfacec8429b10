"""Models the project has never seen (tests/models/unseen.py), loaded as ``PATH.py:FUNC`` with an
``.npz``: listed with sensible groups, pruned structurally where possible and unstructured,
exported, and the exported ONNX reproduces the accuracy that metrics.json reports."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.errors import PlanError
from explorer.inspect import PRUNABLE_TYPES, out_channels
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan
from explorer.report import export_bundle
from explorer.runtime import OrtModel, export_onnx
from explorer.subject import Subject

ATOL = 1e-4
SubjectOf = Callable[..., Subject]


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def _kept(base: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices (dim 0) of the base filters that survive in ``pruned``, in order."""
    kept = []
    for filt in pruned:
        matches = [i for i, b in enumerate(base) if torch.equal(b, filt)]
        assert len(matches) == 1
        kept.append(matches[0])
    assert kept == sorted(kept)
    return kept


# --- listing -------------------------------------------------------------------------------------


def test_inventory_lists_every_layer(unseen_name: str, unseen_subject: SubjectOf) -> None:
    subj = unseen_subject(unseen_name)
    inv = subj.inventory
    expected = [n for n, m in subj.model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    assert inv.names == expected
    assert inv.structured_error == ""
    assert inv.total_params == sum(p.numel() for p in subj.model.parameters())
    assert inv.total_macs > 0
    assert all(layer.macs > 0 for layer in inv.layers if not layer.note.startswith("not called"))
    for layer in inv.layers:
        module = _modules(subj.model)[layer.name]
        assert layer.shape == tuple(module.weight.shape) and layer.out_channels == out_channels(
            module
        )
        assert (layer.group is None) == bool(layer.note), (
            f"{layer.name}: a group or a reason, not both"
        )
    outputs = [layer for layer in inv.layers if layer.note.startswith("output layer")]
    assert [layer.name for layer in outputs] == [inv.names[-1]]  # the head, and only it
    # groups are consistent with the layers' group ids, and every group is listed by its first
    # member
    for gid, members in inv.groups.items():
        assert members[0] == gid and all(inv[m].group == gid for m in members)
        assert len({inv[m].out_channels for m in members}) == 1  # coupled channels have one count
    assert inv.groups, "every unseen model has something structured pruning can remove"


def test_residual_adds_couple_their_layers(unseen_subject: SubjectOf) -> None:
    groups = unseen_subject("residual_1d").inventory.groups
    assert set(groups["stem"]) == {"stem", "blocks.0.conv2"}  # identity shortcut
    assert set(groups["blocks.1.conv2"]) == {
        "blocks.1.conv2",
        "blocks.1.proj",
        "blocks.2.conv2",
    }  # projection
    assert groups["blocks.0.conv1"] == ("blocks.0.conv1",)


def test_depthwise_conv_is_coupled_with_its_producer(unseen_subject: SubjectOf) -> None:
    subj = unseen_subject("mobilenet")
    groups = subj.inventory.groups
    for block in range(3):
        assert set(groups[f"blocks.{block}.expand.0"]) == {
            f"blocks.{block}.expand.0",
            f"blocks.{block}.depthwise.0",
        }
    assert set(groups["stem.0"]) == {"stem.0", "blocks.0.project.0"}  # residual add
    assert set(groups["blocks.1.project.0"]) == {"blocks.1.project.0", "blocks.2.project.0"}

    pruned = _modules(
        subj.prune(
            PruningPlan(method="l1-structured", layers={"blocks.1.depthwise.0": LayerRule(0.5)})
        )
    )
    base = _modules(subj.model)
    dw, expand = pruned["blocks.1.depthwise.0"], pruned["blocks.1.expand.0"]
    assert expand.out_channels == dw.in_channels == dw.out_channels == dw.groups == 24
    assert pruned["blocks.1.project.0"].in_channels == 24
    kept = _kept(base["blocks.1.expand.0"].weight, expand.weight)
    assert torch.equal(
        dw.weight, base["blocks.1.depthwise.0"].weight[kept]
    )  # the same channels went
    assert torch.equal(
        pruned["blocks.1.project.0"].weight, base["blocks.1.project.0"].weight[:, kept]
    )


def test_concatenated_branches_shrink_their_consumers(unseen_subject: SubjectOf) -> None:
    subj = unseen_subject("inception")
    groups = subj.inventory.groups
    for branch in (
        "inception.b1",
        "inception.b3.2",
        "inception.b5.2",
        "inception.pool.1",
        "dense.0.conv",
    ):
        assert groups[branch] == (branch,), f"{branch}: a concatenation does not couple branches"

    plan = PruningPlan(
        method="l2-structured",
        layers={"inception.b3.2": LayerRule(0.5), "dense.0.conv": LayerRule(0.25)},
    )
    pruned_model = subj.prune(plan)
    pruned, base = _modules(pruned_model), _modules(subj.model)
    kept_b3 = _kept(base["inception.b3.2"].weight, pruned["inception.b3.2"].weight)
    # inception output = cat(b1: 8, b3: 12, b5: 6, pool: 6); dense.0 appends 8, dense.1 appends 8
    incep = list(range(8)) + [8 + i for i in kept_b3] + list(range(20, 32))
    kept_d0 = _kept(base["dense.0.conv"].weight[:, incep], pruned["dense.0.conv"].weight)
    assert len(kept_b3) == 6 and len(kept_d0) == 6
    after_d0 = incep + [32 + i for i in kept_d0]
    assert torch.equal(
        pruned["dense.0.conv"].weight, base["dense.0.conv"].weight[kept_d0][:, incep]
    )
    assert torch.equal(pruned["dense.1.conv"].weight, base["dense.1.conv"].weight[:, after_d0])
    assert torch.equal(pruned["fc"].weight, base["fc"].weight[:, after_d0 + list(range(40, 48))])
    assert pruned["dense.0.bn"].num_features == 26 and pruned["dense.1.bn"].num_features == 32
    with torch.no_grad():
        assert pruned_model(subj.data.test.x[:5]).shape == (5, 4)


def test_training_only_head_is_listed_and_refuses_structured_pruning(
    unseen_subject: SubjectOf, tmp_path: Path
) -> None:
    subj = unseen_subject("inception")
    aux = subj.inventory["aux"]
    assert aux.group is None and aux.macs == 0 and "not called" in aux.note
    with pytest.raises(PlanError, match="'aux'.*not called"):
        subj.prune(PruningPlan(method="l1-structured", layers={"aux": LayerRule(0.5)}))
    model = subj.prune(
        PruningPlan(method="l1-unstructured", layers={"aux": LayerRule(0.5), "fc": LayerRule(0.5)})
    )
    assert int((_modules(model)["aux"].weight == 0).sum()) == 64
    x = subj.data.test.x
    path = export_onnx(model, subj.example_input, tmp_path / "m.onnx")
    assert np.abs(OrtModel(path)(x.numpy()) - _logits(model, x)).max() <= ATOL


def test_transformer_says_why_attention_is_not_pruned_structurally(
    unseen_subject: SubjectOf,
) -> None:
    subj = unseen_subject("transformer")
    inv = subj.inventory
    fixed = [
        "embed",
        "encoder.layers.0.self_attn.out_proj",
        "encoder.layers.0.linear2",
        "encoder.layers.1.self_attn.out_proj",
        "encoder.layers.1.linear2",
    ]
    for name in fixed:
        assert inv[name].group is None and "attention" in inv[name].note, (name, inv[name].note)
        for method in ("l1-structured", "l2-structured"):
            plan = PruningPlan(method=method, layers={name: LayerRule(0.5)})
            with pytest.raises(PlanError) as err:
                subj.prune(plan)
            assert name in str(err.value) and "attention" in str(err.value)
            with pytest.raises(
                PlanError, match=name.replace(".", r"\.")
            ):  # without the inventory too
                apply_plan(subj.model, plan, subj.example_input)
    assert inv["head"].note.startswith("output layer")
    # nn.MultiheadAttention's fused projection is a layer of its own, pruned by whole heads.
    assert set(inv.groups) == {
        "encoder.layers.0.linear1",
        "encoder.layers.1.linear1",
        "encoder.layers.0.self_attn.in_proj",
        "encoder.layers.1.self_attn.in_proj",
    }
    assert inv["encoder.layers.0.self_attn.in_proj"].heads == 4 and inv[
        "encoder.layers.0.self_attn.in_proj"
    ].shape == (96, 32)


def test_transformer_ffn_shrinks_structurally(unseen_subject: SubjectOf, tmp_path: Path) -> None:
    subj = unseen_subject("transformer")
    plan = PruningPlan(
        method="l1-structured",
        layers={
            "encoder.layers.0.linear1": LayerRule(0.5),
            "encoder.layers.1.linear1": LayerRule(0.25),
        },
    )
    model = subj.prune(plan)
    pruned, base = _modules(model), _modules(subj.model)
    for i, hidden in ((0, 32), (1, 48)):
        lin1, lin2 = pruned[f"encoder.layers.{i}.linear1"], pruned[f"encoder.layers.{i}.linear2"]
        assert (
            lin1.out_features == hidden and lin2.in_features == hidden and lin2.out_features == 32
        )
        kept = _kept(base[f"encoder.layers.{i}.linear1"].weight, lin1.weight)
        assert torch.equal(lin2.weight, base[f"encoder.layers.{i}.linear2"].weight[:, kept])
        attn = pruned[f"encoder.layers.{i}.self_attn"]
        assert attn.in_proj_weight.shape == (96, 32) and attn.embed_dim == 32  # attention untouched
    x = subj.data.test.x
    path = export_onnx(model, subj.example_input, tmp_path / "t.onnx")
    assert np.abs(OrtModel(path)(x.numpy()) - _logits(model, x)).max() <= ATOL
    assert subj.measure(model).macs < subj.dense()[0].macs


def test_layers_without_group_refuse_structured_pruning(
    unseen_name: str, unseen_subject: SubjectOf
) -> None:
    subj = unseen_subject(unseen_name)
    for layer in subj.inventory.layers:
        if layer.group is None:
            with pytest.raises(PlanError, match=layer.name.replace(".", r"\.")):
                subj.prune(PruningPlan(method="l2-structured", layers={layer.name: LayerRule(0.3)}))


# --- pruning and export --------------------------------------------------------------------------


def test_every_method_prunes_and_exports(
    unseen_name: str,
    method: str,
    unseen_subject: SubjectOf,
    full_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    subj = unseen_subject(unseen_name)
    before = {k: v.clone() for k, v in subj.model.state_dict().items()}
    plan = full_plan(subj, method, 0.5)
    model = subj.prune(plan)
    assert all(torch.equal(v, subj.model.state_dict()[k]) for k, v in before.items())
    if plan.method in ("l1-structured", "l2-structured"):
        mods = _modules(model)
        for name in plan.layers:
            n = subj.inventory[name].out_channels
            assert out_channels(mods[name]) == n - math.floor(0.5 * n), name
    x = subj.data.test.x
    path = export_onnx(model, subj.example_input, tmp_path / "m.onnx")
    assert np.abs(OrtModel(path)(x.numpy()) - _logits(model, x)).max() <= ATOL


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "agreement"])
def test_export_bundle_reproduces_metrics(
    unseen_name: str,
    labels: bool,
    unseen_subject: SubjectOf,
    unseen_data: Callable[[str, bool], Path],
    mixed_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    subj = unseen_subject(unseen_name, labels)
    plan = mixed_plan(subj, 0.4)
    files = export_bundle(subj, plan, tmp_path / "out")
    for role in ("plan", "onnx", "state_dict", "metrics", "report"):
        assert files[role].is_file() and files[role].stat().st_size > 0, role
    metrics = json.loads(files["metrics"].read_text())
    assert metrics["labels"] is labels and metrics["dense"]["labels"] is labels

    with np.load(unseen_data(unseen_name, labels)) as z:
        x, y = z["x"], (z["y"] if labels else None)
    logits = OrtModel(files["onnx"])(x)
    if labels:
        accuracy = float((logits.argmax(1) == y).mean())
        dense_acc = metrics["dense"]["accuracy"]
        assert dense_acc >= 0.7, (
            f"{unseen_name}: the fitted model should be useful (dense {dense_acc})"
        )
    else:
        dense_logits = OrtModel(
            export_onnx(subj.model, subj.example_input, tmp_path / "dense.onnx")
        )(x)
        accuracy = float((logits.argmax(1) == dense_logits.argmax(1)).mean())
        assert metrics["dense"]["accuracy"] == 1.0  # the dense model agrees with itself
    assert metrics["accuracy"] == accuracy, "metrics.json does not describe model.onnx"

    # the bundle replays: plan.json on the base model gives the same network as model.onnx ...
    replayed = subj.prune(PruningPlan.load(files["plan"]))
    assert np.abs(_logits(replayed, torch.from_numpy(x)) - logits).max() <= ATOL
    # ... the state dict loads into it, and the torch.export program (when written) computes the
    # same
    state = torch.load(files["state_dict"], weights_only=True)
    replayed.load_state_dict(state)
    if "pt2" in files:
        program = torch.export.load(str(files["pt2"]))
        with torch.no_grad():
            out = program.module()(torch.from_numpy(x[:1]))
        assert np.abs(out.numpy() - logits[:1]).max() <= ATOL
    else:
        assert metrics["pt2_error"]
    assert metrics["macs"] < metrics["dense"]["macs"]  # something was removed structurally
    assert unseen_name in files["report"].read_text()


# --- sensitivity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["l1-unstructured", "l2-structured"])
def test_sensitivity_scan_equals_the_plain_loop(
    unseen_name: str, method: str, unseen_subject: SubjectOf
) -> None:
    """Oracle: for every unit, a fresh pruned copy evaluated in torch (Distiller's loop)."""
    from explorer.evaluate import evaluate_torch
    from explorer.sensitivity import scan, units

    subj = unseen_subject(unseen_name)
    df = scan(subj, method, [0.5])
    todo = units(subj, method)
    assert sorted(set(df["layer"])) == sorted(todo)
    split = subj.data.test
    for unit, members in todo.items():
        plan = PruningPlan(method=method, layers={m: LayerRule(0.5) for m in members})
        accuracy, loss = evaluate_torch(subj.prune(plan), split)
        row = df[(df["layer"] == unit) & (df["ratio"] == 0.5)].iloc[0]
        # the scan may run in ONNX Runtime: allow one sample flipping on a near tie
        assert abs(row["accuracy"] - accuracy) <= 1 / len(split) + 1e-9, (
            unit,
            row["accuracy"],
            accuracy,
        )
        assert row["loss"] == pytest.approx(loss, rel=1e-3, abs=1e-4), unit
