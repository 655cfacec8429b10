"""Data-aware criteria against their papers' formulas and Torch-Pruning's own importances.

- Wanda: the masks equal a direct implementation of the paper's rule (|W| * ||X|| compared per
  output row, the floor(ratio * cols) lowest of every row go), for a linear layer and for a
  convolution (input norms of the unfolded patches computed here by slicing, not by F.unfold).
- SparseGPT: its reconstruction error ||W X - W' X||^2 on the calibration inputs is below
  magnitude pruning's on every layer, unstructured and 2:4, and it changes surviving weights.
- Taylor: weight scores are |w * dL/dw| computed directly; channel scores equal Torch-Pruning's
  GroupTaylorImportance on a copy whose gradients this test computes itself.
- activation, batch-norm scale: equal the statistics they name; a group without batch norm is
  refused by name.
- FLAP: the bias compensation adds exactly W[:, removed] @ mean(X_removed) to the reader's bias,
  and it brings the pruned model's outputs closer to the dense model's than removal alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from explorer.errors import PlanError
from explorer.inspect import build_dependency_graph, structured_groups
from explorer.methods import available_methods, get_method
from explorer.methods.calibration import feature_square_sums, sample, unfold_input
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan, fresh_copy
from explorer.subject import Subject
from explorer.weights import channel_importance


def _inputs(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The input tensor ``layer`` receives for the batch ``x``."""
    seen: list[torch.Tensor] = []
    module = dict(model.named_modules())[layer]
    hook = module.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    return torch.cat(seen)


def _calibration_inputs(subj: Subject, layer: str) -> torch.Tensor:
    assert subj.calibration is not None
    x, _ = sample(subj.calibration)
    return _inputs(subj.model, layer, x)


def _conv_feature_norms(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """||X_j|| of every (channel, kh, kw) feature of the conv's patches, by slicing the padded
    input."""
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    kh, kw = conv.kernel_size
    xp = F.pad(x, (pw, pw, ph, ph))
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    norms = torch.zeros(x.shape[1], kh, kw, dtype=torch.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :,
                :,
                i * dh : i * dh + sh * (out_h - 1) + 1 : sh,
                j * dw : j * dw + sw * (out_w - 1) + 1 : sw,
            ]
            norms[:, i, j] = patch.double().pow(2).sum((0, 2, 3))
    return norms.sqrt().reshape(-1)


def _paper_wanda_mask(w: torch.Tensor, norms: torch.Tensor, ratio: float) -> torch.Tensor:
    metric = w.reshape(w.shape[0], -1).abs().double() * norms.reshape(1, -1)
    drop = metric.sort(dim=-1, stable=True).indices[:, : int(metric.shape[1] * ratio)]
    keep = torch.ones_like(metric, dtype=torch.bool)
    keep.scatter_(1, drop, False)
    return keep.reshape(w.shape)


def _pruned(subj: Subject, method: str, layer: str, ratio: float) -> torch.Tensor:
    model = subj.prune(PruningPlan(method=method, layers={layer: LayerRule(ratio)}))
    return dict(model.named_modules())[layer].weight.detach()


@pytest.mark.parametrize(
    ("zoo", "layer"), [("digits-mlp", "hidden.2"), ("digits-cnn", "features.3")]
)
def test_wanda_masks_are_the_papers_formula(
    zoo: str, layer: str, subject: Callable[..., Subject]
) -> None:
    subj = subject(f"zoo:{zoo}")
    module = dict(subj.model.named_modules())[layer]
    x = _calibration_inputs(subj, layer)
    if isinstance(module, nn.Linear):
        norms = x.double().reshape(-1, x.shape[-1]).pow(2).sum(0).sqrt()
    else:
        norms = _conv_feature_norms(module, x)
    for ratio in (0.25, 0.5):  # ratio * columns is a whole number: the paper's rule is exact
        expected = _paper_wanda_mask(module.weight.detach(), norms, ratio)
        got = _pruned(subj, "wanda-unstructured", layer, ratio) != 0
        assert torch.equal(got, expected & (module.weight.detach() != 0)), ratio
    # Wanda 2:4 keeps the 2 of largest |W|*||X|| in every 4 consecutive inputs
    w = module.weight.detach().reshape(module.weight.shape[0], -1)
    metric = (w.abs().double() * norms.reshape(1, -1)).reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(metric, dtype=torch.bool).scatter_(
        -1, metric.topk(2, dim=-1).indices, True
    )
    got = _pruned(subj, "wanda-2:4", layer, 0.5).reshape(keep.shape) != 0
    assert torch.equal(got, keep)


def _reconstruction_error(subj: Subject, layer: str, w_new: torch.Tensor) -> float:
    module = dict(subj.model.named_modules())[layer]
    rows = unfold_input(module, _calibration_inputs(subj, layer)).double()
    w = module.weight.detach().reshape(module.weight.shape[0], -1).double()
    return float((rows @ (w - w_new.reshape(w.shape).double()).T).pow(2).sum())


@pytest.mark.parametrize("zoo", ["digits-mlp", "digits-cnn"])
def test_sparsegpt_reconstructs_better_than_magnitude_on_every_layer(
    zoo: str, subject: Callable[..., Subject]
) -> None:
    subj = subject(f"zoo:{zoo}")
    for layer in subj.layer_names:
        for ours, baseline, ratio in (
            ("sparsegpt-unstructured", "l1-unstructured", 0.6),
            ("sparsegpt-2:4", "2:4", 0.5),
        ):
            w_ours = _pruned(subj, ours, layer, ratio)
            w_base = _pruned(subj, baseline, layer, ratio)
            assert int((w_ours == 0).sum()) == int((w_base == 0).sum()), (
                layer,
                ours,
            )  # the same sparsity
            assert _reconstruction_error(subj, layer, w_ours) < _reconstruction_error(
                subj, layer, w_base
            ), (layer, ours)
            kept = w_ours != 0
            original = dict(subj.model.named_modules())[layer].weight.detach()
            assert not torch.equal(w_ours[kept], original[kept]), (
                "SparseGPT updates the surviving weights"
            )


def _direct_gradients(subj: Subject) -> nn.Module:
    """A copy of the model whose .grad fields hold the calibration loss's gradient (CE on the
    labels,
    summed over the samples)."""
    model = fresh_copy(subj.model)
    model.requires_grad_(True)
    assert subj.calibration is not None
    x, y = sample(subj.calibration)
    assert y is not None
    for i in range(0, len(x), 64):
        F.cross_entropy(model(x[i : i + 64]), y[i : i + 64], reduction="sum").backward()
    return model


def test_taylor_weight_scores_are_w_times_grad(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    model = _direct_gradients(subj)
    layer = "hidden.0"
    module = dict(model.named_modules())[layer]
    scores = (module.weight.detach() * module.weight.grad / len(sample(subj.calibration)[0])).abs()
    expected = scores.reshape(-1).topk(round(0.5 * scores.numel()), largest=False).indices
    got = _pruned(subj, "taylor-unstructured", layer, 0.5).reshape(-1) == 0
    assert torch.equal(got.nonzero().squeeze(1).sort().values, expected.sort().values)


def _group_of(model: nn.Module, subj: Subject, layer: str) -> tp.Group:
    dg = build_dependency_graph(model, subj.example_input)
    return next(group for group, members in structured_groups(dg, model) if layer in members)


def test_taylor_channel_scores_equal_torch_prunings(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    model = _direct_gradients(subj)
    expected = tp.importance.GroupTaylorImportance()(_group_of(model, subj, "features.3"))
    got = channel_importance(subj, "features.3", "taylor-structured")
    np.testing.assert_allclose(got, expected.double().numpy(), rtol=1e-4, atol=1e-9)


def test_bn_scale_is_the_batch_norm_scale(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    bn = dict(subj.model.named_modules())["features.1"]
    gamma = bn.weight.detach().abs().double()
    got = channel_importance(subj, "features.0", "bn-scale-structured")
    np.testing.assert_allclose(got, (gamma / gamma.mean()).numpy(), rtol=1e-5)
    mlp = subject("zoo:digits-mlp")
    assert get_method("bn-scale-structured").applies_to(
        "hidden.0", mlp.inventory
    )  # no batch norm: says why
    with pytest.raises(PlanError, match="batch norm"):
        mlp.prune(PruningPlan(method="bn-scale-structured", layers={"hidden.0": LayerRule(0.5)}))


def test_activation_scores_are_the_mean_activations(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    x = _calibration_inputs(subj, "hidden.2")  # what hidden.0's channels feed (after the ReLU)
    mean = x.abs().double().mean(0)
    got = channel_importance(subj, "hidden.0", "activation-structured")
    np.testing.assert_allclose(got, (mean / mean.mean()).numpy(), rtol=1e-5)


def test_flap_compensates_the_bias_of_the_reader(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    x_in = _calibration_inputs(subj, "hidden.2")
    mean = x_in.double().mean(0)
    dense = dict(subj.model.named_modules())
    plan = PruningPlan(method="flap-structured", layers={"hidden.0": LayerRule(0.5)})
    pruned = subj.prune(plan)
    modules = dict(pruned.named_modules())
    # which of hidden.0's channels survived: match the kept rows to the dense ones
    kept = [
        int(torch.nonzero((dense["hidden.0"].weight == row).all(1)).item())
        for row in modules["hidden.0"].weight
    ]
    removed = sorted(set(range(256)) - set(kept))
    assert len(removed) == 128
    expected = (
        dense["hidden.2"].bias.detach().double()
        + dense["hidden.2"].weight.detach().double()[:, removed] @ mean[removed]
    )
    np.testing.assert_allclose(
        modules["hidden.2"].bias.detach().double().numpy(), expected.numpy(), rtol=1e-5, atol=1e-6
    )
    # the compensation moves the pruned model's outputs towards the dense model's
    x, _ = sample(subj.calibration)
    with torch.no_grad():
        target = subj.model(x)
        with_comp = pruned(x)
        modules["hidden.2"].bias.copy_(dense["hidden.2"].bias)
        without = pruned(x)
    assert (with_comp - target).pow(2).mean() < (without - target).pow(2).mean()


def test_data_aware_methods_say_they_read_data(subject: Callable[..., Subject]) -> None:
    for name in (
        "taylor-unstructured",
        "taylor-structured",
        "wanda-unstructured",
        "wanda-2:4",
        "sparsegpt-unstructured",
        "sparsegpt-2:4",
        "activation-structured",
        "flap-structured",
    ):
        method = get_method(name)
        assert method.needs_data and "calibration" in method.data_note, name
    assert (
        not get_method("bn-scale-structured").needs_data
        and not get_method("l1-unstructured").needs_data
    )


@pytest.mark.parametrize(
    "method", [m for m in available_methods() if get_method(m).needs_data], ids=str
)
def test_data_aware_methods_refuse_without_calibration_data(method: str) -> None:
    """Without any data a data-aware criterion refuses with one message naming it and the fix."""
    subj = Subject("zoo:digits-cnn")
    layer = subj.layer_names[1]
    plan = PruningPlan(method=method, layers={layer: LayerRule(0.5)})
    with pytest.raises(PlanError, match=rf"^{re.escape(method)} .*this model has none; give data"):
        apply_plan(subj.model, plan, subj.example_input, subj.inventory, calibration=None)


_STRING_PADDED = {
    "same-3x3": nn.Conv2d(3, 4, 3, padding="same"),
    "same-even-dilated": nn.Conv2d(
        3, 4, (2, 4), padding="same", dilation=(1, 2)
    ),  # even kernels: one more at the end
    "valid": nn.Conv2d(3, 4, 3, padding="valid"),
    "same-depthwise": nn.Conv2d(4, 4, 3, padding="same", groups=4),  # depthwise (EfficientNet's)
    "same-1d-even": nn.Conv1d(3, 4, 4, padding="same"),
    "valid-1d": nn.Conv1d(3, 4, 3, padding="valid", stride=2),
}


@pytest.mark.parametrize("conv", _STRING_PADDED.values(), ids=_STRING_PADDED.keys())
def test_unfolded_patches_of_string_padding_times_the_weight_are_the_convolution(
    conv: nn.Conv1d | nn.Conv2d,
) -> None:
    """Data-aware criteria read a conv's patches: with ``padding='same'`` or ``'valid'`` (Hugging
    Face's EfficientNet) they must be the patches the conv multiplies, so patches x weight (per
    group) is the conv's output, position by position."""
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, *([7, 9] if isinstance(conv, nn.Conv2d) else [11]))
    with torch.no_grad():
        want = conv(x)
        rows = unfold_input(conv, x)  # (positions, in * k)
        g = conv.groups
        per_group = rows.reshape(len(rows), g, -1)
        w = conv.weight.reshape(g, conv.out_channels // g, -1)
        got = torch.einsum("rgi,goi->rgo", per_group, w).reshape(len(rows), -1) + conv.bias
    assert torch.allclose(
        got, want.flatten(2).transpose(1, 2).reshape(-1, conv.out_channels), atol=1e-5
    )


_GEOMETRIES = {
    **_STRING_PADDED,
    "stem-7x7-stride-2": nn.Conv2d(3, 4, 7, stride=2, padding=3),
    "strided-1x1": nn.Conv2d(3, 4, 1, stride=2),
    "dilated-padded": nn.Conv2d(3, 4, (3, 2), padding=(2, 1), dilation=(2, 3), stride=(1, 2)),
    "grouped": nn.Conv2d(4, 6, 3, padding=1, groups=2),
    "1d-padded-strided": nn.Conv1d(3, 4, 5, padding=2, stride=3),
    "linear": nn.Linear(9, 4),
}


@pytest.mark.parametrize("layer", _GEOMETRIES.values(), ids=_GEOMETRIES.keys())
def test_feature_square_sums_are_those_of_the_unfolded_patches(layer: nn.Module) -> None:
    """Wanda's ``||X_j||^2`` from strided slices of the summed squares equals the sum over the
    im2col rows, feature by feature, for every padding, stride, dilation and group."""
    torch.manual_seed(0)
    if isinstance(layer, nn.Linear):
        shape: list[int] = [2, 5, 9]  # a sequence: every leading position is a row
    elif isinstance(layer, nn.Conv2d):
        shape = [3, layer.in_channels, 11, 8]
    else:
        shape = [3, layer.in_channels, 13]
    x = torch.randn(*shape)
    want = unfold_input(layer, x).double().pow(2).sum(0)
    got = feature_square_sums(layer, x)
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-6, atol=0)  # float32 squares, float64 sums


class _IntoAGroupedConv(nn.Module):
    """A 1x1 conv whose 8 channels only a grouped 3x3 conv reads (2 groups of 4 inputs, 2 outputs
    each: RegNet's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 3, padding=1, groups=2)
        self.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(torch.relu(self.a(x))).mean((2, 3)))


def test_flap_reads_channels_through_a_grouped_convolution() -> None:
    """FLAP's fluctuation ``Var(X_j) * ||W_:,j||^2`` of a channel read by a grouped convolution:
    ``W_:,j`` is the column of the outputs of its own group (the others never read it). It refused
    such a group before (RegNet: "no layer reads the channels")."""
    from explorer.data import Split
    from explorer.methods.flap import FlapStructured

    torch.manual_seed(0)
    model, x = _IntoAGroupedConv().eval(), torch.randn(16, 3, 6, 6)
    model.requires_grad_(True)
    dg = build_dependency_graph(model, x[:1])
    group = dg.get_pruning_group(model.a, tp.prune_conv_out_channels, idxs=list(range(8)))
    scores = FlapStructured().scorer(model, Split(x, None))(group)
    with torch.no_grad():
        h = torch.relu(model.a(x)).double()  # what b reads
    var = h.transpose(0, 1).reshape(8, -1).var(1, unbiased=False)
    w = model.b.weight.detach().double()  # (4, 4, 3, 3): outputs 0-1 read inputs 0-3, 2-3 read 4-7
    col = torch.stack([w[2 * (j // 4) : 2 * (j // 4) + 2, j % 4].pow(2).sum() for j in range(8)])
    want = var * col
    np.testing.assert_allclose(scores.double().numpy(), (want / want.mean()).numpy(), rtol=1e-4)
    pruned = apply_plan(
        model,
        PruningPlan(method="flap-structured", layers={"a": LayerRule(0.5)}),
        x[:1],
        calibration=Split(x, None),
    )
    with torch.no_grad():
        assert pruned(x).shape == (16, 2) and pruned.a.out_channels == 4
