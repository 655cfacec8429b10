"""The pruning engine against oracles: torch.nn.utils.prune for unstructured masks, a brute-force
reference for 2:4, channel counts for structured methods. Every registered method is covered."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from explorer.errors import PlanError
from explorer.inspect import out_channels
from explorer.methods import get_method, unstructured_mask
from explorer.methods.nm import nm_mask
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan
from explorer.subject import Subject


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


# --- every method ----------------------------------------------------------------------------


def test_base_model_unchanged_and_pruned_copy_runs(
    zoo_name: str,
    method: str,
    subject: Callable[..., Subject],
    full_plan: Callable[..., PruningPlan],
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    before = _state(subj.model)
    plan = full_plan(subj, method, 0.5)
    pruned = subj.prune(plan)

    after = subj.model.state_dict()
    assert after.keys() == before.keys()
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and after[key].shape == tensor.shape, key
        assert torch.equal(after[key], tensor), f"base model changed at {key}"
    assert not subj.model.training
    assert not any(p.requires_grad for p in subj.model.parameters())
    assert pruned is not subj.model

    # the copy really is pruned: fewer parameters (structured) or more zeros (the others)
    dense_zeros = sum(int((p == 0).sum()) for p in subj.model.parameters())
    if not plan.layers:  # the method applies to no layer of this model: each says why
        assert all(get_method(method).applies_to(n, subj.inventory) for n in subj.layer_names)
    elif get_method(method).structured:
        assert sum(p.numel() for p in pruned.parameters()) < sum(
            p.numel() for p in subj.model.parameters()
        )
    else:
        assert sum(int((p == 0).sum()) for p in pruned.parameters()) > dense_zeros

    x = subj.data.test.x[:16]
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (16, subj.model(x).shape[1])
    assert torch.isfinite(out).all()


def test_apply_plan_is_deterministic(
    method: str, subject: Callable[..., Subject], full_plan: Callable[..., PruningPlan]
) -> None:
    subj = subject("zoo:digits-resnet")
    plan = full_plan(subj, method, 0.3)
    a, b = _state(subj.prune(plan)), _state(subj.prune(plan))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_layer_is_a_plan_error(method: str, subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    plan = PruningPlan(method=method, layers={"features.99": LayerRule(0.5)})
    with pytest.raises(PlanError, match=r"features\.99"):
        subj.prune(plan)


# --- unstructured: oracle torch.nn.utils.prune ---------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.77, 0.999])
def test_unstructured_mask_equals_torch_l1(ratio: float) -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(37, 11, 3, generator=gen)  # odd sizes: rounding of round(ratio * n) matters
    oracle = torch_prune.L1Unstructured(amount=ratio).compute_mask(w, torch.ones_like(w))
    ours = unstructured_mask(w.abs(), ratio)
    assert torch.equal(ours, oracle.bool())


def _scores(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(41, 13, 3, generator=gen)
    if kind == "ties":  # five values: nearly every boundary falls among equal scores
        return torch.randint(0, 5, w.shape, generator=gen).float()
    if kind == "zeros":  # an already sparse layer: its zeros tie
        return (w * (torch.rand(w.shape, generator=gen) > 0.6)).abs()
    if kind == "nan":
        w.view(-1)[::17] = float("nan")
    if kind == "int":
        return torch.randint(-3, 4, w.shape, generator=gen)
    return w.abs()


@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "nan", "int"])
def test_unstructured_mask_picks_what_topk_picks(kind: str) -> None:
    """The ``kthvalue`` shortcut against the ``topk`` it stands for, at every ``k`` (every ratio
    that rounds to a distinct count), ties and NaNs included."""
    scores = _scores(kind)
    n = scores.numel()
    for k in range(n + 1):
        oracle = torch.ones(n, dtype=torch.bool)
        if k:
            oracle[torch.topk(scores.reshape(-1), k=k, largest=False).indices] = False
        ours = unstructured_mask(scores, k / n)
        assert ours.shape == scores.shape and ours.dtype == torch.bool
        assert torch.equal(ours.reshape(-1), oracle), (kind, k)


def test_l1_unstructured_equals_torch_prune(zoo_name: str, subject: Callable[..., Subject]) -> None:
    subj = subject(f"zoo:{zoo_name}")
    ratios = [0.1, 0.35, 0.5, 0.8, 0.95]
    layers = {name: LayerRule(ratios[i % len(ratios)]) for i, name in enumerate(subj.layer_names)}
    pruned = _modules(subj.prune(PruningPlan(method="l1-unstructured", layers=layers)))
    for name, module in subj.model.named_modules():
        if name not in layers:
            continue
        oracle = torch_prune.l1_unstructured(
            copy.deepcopy(module), "weight", amount=layers[name].ratio
        ).weight_mask
        expected = module.weight * oracle
        got = pruned[name].weight
        assert torch.equal(got, expected), (
            f"{name}: mask differs from torch.nn.utils.prune.l1_unstructured"
        )
        assert int((got == 0).sum()) == round(layers[name].ratio * got.numel())


def test_global_l1_equals_torch_global_unstructured(
    zoo_name: str, subject: Callable[..., Subject]
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    names = subj.layer_names
    plan = PruningPlan(
        method="l1-unstructured",
        layers={n: LayerRule(0.0) for n in names},
        scope="global",
        ratio=0.6,
    )
    pruned = _modules(subj.prune(plan))

    reference = copy.deepcopy(subj.model)
    ref_modules = _modules(reference)
    torch_prune.global_unstructured(
        [(ref_modules[n], "weight") for n in names],
        pruning_method=torch_prune.L1Unstructured,
        amount=0.6,
    )
    total = sum(pruned[n].weight.numel() for n in names)
    zeros = 0
    for n in names:
        expected = ref_modules[n].weight  # weight_orig * weight_mask
        assert torch.equal(pruned[n].weight, expected), (
            f"{n}: global mask differs from global_unstructured"
        )
        zeros += int((pruned[n].weight == 0).sum())
    assert zeros == round(0.6 * total)


def test_random_unstructured_reproducible_with_asked_sparsity(
    zoo_name: str, subject: Callable[..., Subject]
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    ratios = [0.2, 0.5, 0.9]
    layers = {name: LayerRule(ratios[i % 3]) for i, name in enumerate(subj.layer_names)}
    plan = PruningPlan(method="random-unstructured", layers=layers)
    first, second = _modules(subj.prune(plan)), _modules(subj.prune(plan))
    l1 = _modules(subj.prune(PruningPlan(method="l1-unstructured", layers=layers)))
    base = _modules(subj.model)
    for name, rule in layers.items():
        w = first[name].weight
        assert int((base[name].weight == 0).sum()) == 0  # so every zero below is a pruned weight
        assert torch.equal(w, second[name].weight), f"{name}: random pruning is not reproducible"
        assert int((w == 0).sum()) == round(rule.ratio * w.numel())
        kept = w != 0
        assert torch.equal(w[kept], base[name].weight[kept])  # survivors untouched
        assert not torch.equal(kept, l1[name].weight != 0), (
            f"{name}: random mask equals the L1 mask"
        )


# --- 2:4 -----------------------------------------------------------------------------------------


def _nm_brute_force(weight: torch.Tensor) -> torch.Tensor:
    """Zero the 2 smallest |w| of every 4 consecutive input weights, one block at a time."""
    rows = weight.detach().reshape(weight.shape[0], -1).tolist()
    out = []
    for row in rows:
        new = list(row)
        full = len(row) // 4 * 4
        for start in range(0, full, 4):
            block = list(range(start, start + 4))
            for i in sorted(block, key=lambda j: abs(row[j]))[:2]:
                new[i] = 0.0
        tail = list(range(full, len(row)))
        for i in sorted(tail, key=lambda j: abs(row[j]))[: len(tail) * 2 // 4]:
            new[i] = 0.0
        out.append(new)
    return torch.tensor(out, dtype=weight.dtype).reshape(weight.shape)


@pytest.mark.parametrize("model_name", ["zoo:digits-mlp", "zoo:digits-cnn"])
def test_2_4_zeros_two_of_every_four(model_name: str, subject: Callable[..., Subject]) -> None:
    subj = subject(model_name)
    small = [layer.name for layer in subj.inventory.layers if layer.params < 40_000]
    pruned = _modules(
        subj.prune(PruningPlan(method="2:4", layers={n: LayerRule(0.5) for n in small}))
    )
    base = _modules(subj.model)
    for name in small:
        w = pruned[name].weight
        assert torch.equal(w, _nm_brute_force(base[name].weight)), name
        rows = w.reshape(w.shape[0], -1)
        full = rows.shape[1] // 4 * 4
        blocks = rows[:, :full].reshape(rows.shape[0], -1, 4)
        assert ((blocks == 0).sum(-1) == 2).all(), f"{name}: a block of 4 without exactly 2 zeros"


def test_nm_mask_keeps_short_tail() -> None:
    w = torch.tensor([[4.0, -1.0, 3.0, 2.0, 9.0, -0.5, 7.0, 1.0, 0.1]])  # 2 blocks + a tail of 1
    assert nm_mask(w).tolist() == [[True, False, True, False, True, False, True, False, True]]


# --- structured ----------------------------------------------------------------------------------

STRUCTURED = ["l1-structured", "l2-structured"]


@pytest.mark.parametrize("method", STRUCTURED)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_structured_removes_floor_ratio_channels(
    method: str, ratio: float, zoo_name: str, subject: Callable[..., Subject]
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    inv = subj.inventory
    grouped = [layer for layer in inv.layers if layer.group is not None]
    assert grouped, "every zoo model has structurally prunable layers"
    pruned = subj.prune(
        PruningPlan(method=method, layers={layer.name: LayerRule(ratio) for layer in grouped})
    )
    mods = _modules(pruned)
    for layer in inv.layers:
        if layer.group is None:
            assert out_channels(mods[layer.name]) == layer.out_channels, (
                f"{layer.name} lost outputs"
            )
            continue
        n = layer.out_channels
        assert out_channels(mods[layer.name]) == n - math.floor(ratio * n), layer.name
        assert mods[layer.name].weight.shape[0] == n - math.floor(ratio * n)
    # consumers follow: every conv/linear's in channels equal what reaches it; the model runs
    with torch.no_grad():
        assert pruned(subj.data.test.x[:4]).shape == (4, 10)
    assert sum(p.numel() for p in pruned.parameters()) < inv.total_params


def test_structured_next_layer_and_batchnorm_shrink(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    plan = PruningPlan(method="l1-structured", layers={"features.3": LayerRule(0.5)})
    mods = _modules(subj.prune(plan))
    assert mods["features.3"].out_channels == 32
    assert mods["features.4"].num_features == 32  # its BatchNorm
    assert mods["features.7"].in_channels == 32  # the next conv
    assert (
        mods["features.0"].out_channels == 32 and mods["features.7"].out_channels == 128
    )  # others untouched


def test_structured_removes_filters_without_altering_the_rest(
    subject: Callable[..., Subject],
) -> None:
    """Removal, not re-weighting: every kept filter is one of the base model's filters,
    unchanged."""
    subj = subject("zoo:digits-cnn")
    base_w = _modules(subj.model)["features.0"].weight
    pruned_w = _modules(
        subj.prune(PruningPlan(method="l1-structured", layers={"features.0": LayerRule(0.25)}))
    )["features.0"].weight
    assert pruned_w.shape[0] == 24
    for filt in pruned_w:
        assert any(torch.equal(filt, b) for b in base_w)  # filters are removed, never altered


def test_coupled_layers_shrink_together(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-resnet")
    groups = subj.inventory.groups
    coupled = {gid: members for gid, members in groups.items() if len(members) > 1}
    assert len(coupled) >= 2, f"the residual adds must couple layers: {groups}"
    assert set(groups["stem.0"]) == {"stem.0", "layer1.0.conv2", "layer1.1.conv2"}
    for gid, members in coupled.items():
        # listing ONE member prunes the whole group
        pruned = _modules(
            subj.prune(PruningPlan(method="l2-structured", layers={members[-1]: LayerRule(0.5)}))
        )
        n = subj.inventory[gid].out_channels
        for m in members:
            assert out_channels(pruned[m]) == n - n // 2, f"{m} did not shrink with its group {gid}"
        others = [layer for layer in subj.inventory.layers if layer.group not in (gid, None)]
        for layer in others:
            assert out_channels(pruned[layer.name]) == layer.out_channels, (
                f"{layer.name} shrank with {gid}"
            )


def test_group_uses_its_largest_listed_ratio(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-resnet")
    plan = PruningPlan(
        method="l1-structured", layers={"stem.0": LayerRule(0.25), "layer1.1.conv2": LayerRule(0.5)}
    )
    mods = _modules(subj.prune(plan))
    assert {out_channels(mods[m]) for m in ("stem.0", "layer1.0.conv2", "layer1.1.conv2")} == {16}


@pytest.mark.parametrize("method", STRUCTURED)
def test_output_layer_never_loses_outputs(
    method: str, zoo_name: str, subject: Callable[..., Subject]
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    outputs = [layer for layer in subj.inventory.layers if "output layer" in layer.note]
    assert len(outputs) == 1 and outputs[0].group is None
    out = outputs[0].name
    with pytest.raises(PlanError, match=rf"{out!r}.*cannot lose output channels"):
        subj.prune(PruningPlan(method=method, layers={out: LayerRule(0.5)}))
    # also without the inventory's help (apply_plan's own DepGraph check)
    with pytest.raises(PlanError, match=rf"{out!r}"):
        apply_plan(
            subj.model, PruningPlan(method=method, layers={out: LayerRule(0.5)}), subj.example_input
        )
    # an unstructured method may still prune it
    pruned = _modules(
        subj.prune(PruningPlan(method="l1-unstructured", layers={out: LayerRule(0.5)}))
    )
    assert out_channels(pruned[out]) == 10


def test_structured_keeps_one_channel_at_most_ratio(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    mods = _modules(
        subj.prune(PruningPlan(method="l1-structured", layers={"hidden.0": LayerRule(0.999)}))
    )
    assert mods["hidden.0"].out_features == 1 and mods["hidden.2"].in_features == 1


def test_global_structured_plan_runs_and_shrinks(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    grouped = [layer.name for layer in subj.inventory.layers if layer.group is not None]
    plan = PruningPlan(
        method="l2-structured",
        layers={n: LayerRule(0.0) for n in grouped},
        scope="global",
        ratio=0.5,
    )
    pruned = subj.prune(plan)
    mods = _modules(pruned)
    removed = sum(subj.inventory[n].out_channels - out_channels(mods[n]) for n in grouped)
    total = sum(subj.inventory[n].out_channels for n in grouped)
    assert removed == pytest.approx(0.5 * total, abs=len(grouped))
    assert all(out_channels(mods[n]) >= 1 for n in grouped)
    with torch.no_grad():
        assert pruned(subj.data.test.x[:2]).shape == (2, 10)


def test_mixed_methods_in_one_plan(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    plan = PruningPlan(
        method="l1-structured",
        layers={
            "features.0": LayerRule(0.5),
            "features.3": LayerRule(0.5, "l1-unstructured"),
            "classifier": LayerRule(0.5, "2:4"),
        },
    )
    mods = _modules(subj.prune(plan))
    assert mods["features.0"].out_channels == 16
    w = mods["features.3"].weight  # lost half its inputs first, then half its weights
    assert w.shape == (64, 16, 3, 3) and int((w == 0).sum()) == round(0.5 * w.numel())
    assert int((mods["classifier"].weight == 0).sum()) == 10 * 256 // 2


class _ChannelBias(nn.Module):
    """Conv, then a bare per-channel parameter (C, 1, 1) added: Torch-Pruning prunes its dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.shift = nn.Parameter(torch.randn(8, 1, 1))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x) + self.shift).mean((2, 3))


class _TokenTable(nn.Module):
    """Linear, then a bare (1, L, C) table added (a position embedding an ONNX exporter folded
    into a constant): Torch-Pruning prunes its dim 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.table = nn.Parameter(torch.randn(1, 5, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(x) + self.table).mean(1)


def test_a_bare_parameter_is_pruned_along_its_own_dimension_whatever_was_pruned_before() -> None:
    """Torch-Pruning has one pruner for every bare parameter, and each dependency sets its
    dimension when it runs. Reading that pruner's dimension before running (the last model's)
    left the table unpruned after another model's (C, 1, 1) parameter had been pruned: the
    pruned model failed with mismatched sizes."""
    from explorer.inspect import inventory

    torch.manual_seed(0)
    first, x1 = _ChannelBias().eval(), torch.rand(2, 3, 8, 8)
    second, x2 = _TokenTable().eval(), torch.rand(2, 5, 4)
    for model, x, layer in ((first, x1, "conv"), (second, x2, "fc")):
        pruned = apply_plan(
            model,
            PruningPlan(method="l1-structured", layers={layer: LayerRule(0.5)}),
            x,
            inventory(model, x),
        )
        with torch.no_grad():
            assert pruned(x).shape == model(x).shape
        assert (
            dict(pruned.named_modules())[layer].weight.shape[0]
            < dict(model.named_modules())[layer].weight.shape[0]
        )
    assert second.table.shape == (1, 5, 6)  # the user's model untouched
