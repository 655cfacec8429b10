"""First-order Taylor: a weight (a channel) matters by how much the loss would change without it,
``|w * dL/dw|`` (Molchanov et al. 2017, 2019), gradients from the calibration data (cross-entropy
on the labels, or on the model's own top-1 where there are none). For channels: Torch-Pruning's
``GroupTaylorImportance`` over the coupled layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

from explorer.methods import register
from explorer.methods.base import (
    ChannelMethod,
    LayerContext,
    WeightMethod,
    layer_is_hookable,
    require_calibration,
)
from explorer.methods.calibration import BATCH, gradients, loss_on, sample

if TYPE_CHECKING:
    from explorer.data import Split
    from explorer.inspect import Inventory


class TaylorUnstructured(WeightMethod):
    name = "taylor-unstructured"
    summary = (
        "zero the weights of smallest |w·∂L/∂w| (first-order Taylor; gradients from calibration"
        " data)"
    )
    needs_data = True

    def applies_to(self, layer: str, inventory: Inventory) -> str | None:
        if inventory.ort_ops:
            return (
                f"part of this graph runs in ONNX Runtime ({', '.join(inventory.ort_ops)}): no"
                " gradient flows through it"
            )
        return layer_is_hookable(layer, inventory)

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        grad = gradients(ctx.model, ctx.require_calibration(self.name))[ctx.layer]
        return (ctx.weight * grad).abs()


def accumulate_gradients(model: nn.Module, calibration: Split) -> None:
    """Fill every parameter's ``.grad`` with the calibration loss's gradient (summed over
    samples)."""
    x, y = sample(calibration)
    for p in model.parameters():
        p.grad = None
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for i in range(0, len(x), BATCH):
                loss_on(model, x[i : i + BATCH], None if y is None else y[i : i + BATCH]).backward()
    finally:
        model.train(was_training)


class TaylorStructured(ChannelMethod):
    name = "taylor-structured"
    summary = (
        "remove the output channels of smallest group Taylor importance |w·∂L/∂w| "
        "(Torch-Pruning's GroupTaylorImportance; gradients from calibration data)"
    )
    score_label = "group Taylor importance"
    needs_data = True

    def scorer(
        self, model: nn.Module, calibration: Split | None, *, global_ranking: bool = False
    ) -> Callable[[tp.Group], torch.Tensor]:
        calibration = require_calibration(
            calibration, self.name, "scores channels with gradients of calibration data"
        )
        accumulate_gradients(model, calibration)
        return tp.importance.GroupTaylorImportance(normalizer="mean")


register(TaylorUnstructured())
register(TaylorStructured())
