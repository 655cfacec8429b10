"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"): a
weight's score is its magnitude times the L2 norm of the input feature it multiplies,
``|W_ij| * ||X_j||``, compared within each output row; no weight is updated. One calibration pass.

Convolutions extend it as im2col does: an input feature is one (channel, kernel position) of the
unfolded patch, so ``||X_j||`` lines up with a column of the weight reshaped to ``(out, -1)``.
"""

from __future__ import annotations

import torch

from explorer.methods import register
from explorer.methods.base import LayerContext, WeightMethod, layer_is_hookable
from explorer.methods.calibration import input_norms
from explorer.methods.nm import MagnitudeNM

__all__ = ["row_mask", "wanda_scores"]


def wanda_scores(ctx: LayerContext, method: str) -> torch.Tensor:
    """``|W| * ||X||`` with the weight's shape, the norms from the calibration data."""
    w = ctx.weight
    norms = input_norms(ctx.model, ctx.require_calibration(method))[ctx.layer]
    groups = getattr(ctx.module, "groups", 1)
    per_group = norms.reshape(groups, -1)  # (groups, in/groups * k): group g's features
    rows = per_group.repeat_interleave(w.shape[0] // groups, dim=0)  # one row of norms per output
    return w.abs() * rows.reshape(w.shape)


def row_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask removing, in every output row, its ``floor(ratio * cols)`` lowest scores (the
    paper's per-output comparison); the few more that ``round(ratio * n)`` asks go to the rows
    whose next-lowest score is lowest, so the layer's sparsity is exact."""
    rows = scores.reshape(scores.shape[0], -1)
    n_rows, cols = rows.shape
    total = round(ratio * rows.numel())
    per_row = min(total // n_rows, cols)
    order = rows.sort(dim=1, stable=True).indices
    mask = torch.ones_like(rows, dtype=torch.bool)
    if per_row:
        mask.scatter_(1, order[:, :per_row], False)
    extra = total - per_row * n_rows
    if extra and per_row < cols:
        nxt = rows.gather(1, order[:, per_row : per_row + 1]).squeeze(1)
        chosen = nxt.topk(extra, largest=False).indices
        mask[chosen, order[chosen, per_row]] = False
    return mask.reshape(scores.shape)


class WandaUnstructured(WeightMethod):
    name = "wanda-unstructured"
    summary = (
        "zero the weights of smallest |W|·‖X‖ in each output row (Wanda; input norms from"
        " calibration data)"
    )
    needs_data = True

    def applies_to(self, layer: str, inventory: object) -> str | None:
        return layer_is_hookable(layer, inventory)

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return wanda_scores(ctx, self.name)

    def mask(self, ctx: LayerContext, ratio: float) -> torch.Tensor:
        return row_mask(self.scores(ctx), ratio)


class Wanda24(MagnitudeNM):
    name = "wanda-2:4"
    summary = (
        "in every block of 4 consecutive input weights, zero the 2 of smallest |W|·‖X‖ (Wanda N:M)"
    )
    needs_data = True

    def applies_to(self, layer: str, inventory: object) -> str | None:
        return layer_is_hookable(layer, inventory)

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return wanda_scores(ctx, self.name)


register(WandaUnstructured())
register(Wanda24())
