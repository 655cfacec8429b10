"""N:M semi-structured sparsity: in every block of M consecutive input weights, N are zeroed."""

from __future__ import annotations

from typing import ClassVar

import torch

from explorer.methods import register
from explorer.methods.base import Kind, LayerContext, WeightMethod

__all__ = ["nm_mask"]


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep-mask zeroing the ``n`` scores of smallest magnitude in every ``m`` consecutive input
    weights.

    Input weights are the flattened (in, kh, kw) of a conv or the inputs of a linear. A trailing
    block shorter than ``m`` loses ``len * n // m`` weights.
    """
    rows = scores.detach().abs().reshape(scores.shape[0], -1)
    mask = torch.ones_like(rows, dtype=torch.bool)
    full = rows.shape[1] // m * m
    if full:
        blocks = rows[:, :full].reshape(rows.shape[0], -1, m)
        drop = blocks.topk(n, dim=-1, largest=False).indices
        mask[:, :full].reshape(rows.shape[0], -1, m).scatter_(-1, drop, False)
    tail = rows.shape[1] - full
    if tail and tail * n // m:
        drop = rows[:, full:].topk(tail * n // m, dim=-1, largest=False).indices
        mask[:, full:].scatter_(-1, drop, False)
    return mask.reshape(scores.shape)


class MagnitudeNM(WeightMethod):
    """Magnitude N:M; a subclass changes ``scores`` to rank the weights of a block differently."""

    name = "2:4"
    kind: ClassVar[Kind] = "semi-structured"
    summary = (
        "in every block of 4 consecutive input weights, zero the 2 smallest (50% sparsity; "
        "any ratio > 0 applies the pattern)"
    )
    n, m = 2, 4

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return ctx.weight.abs()

    def mask(self, ctx: LayerContext, ratio: float) -> torch.Tensor:
        return nm_mask(self.scores(ctx), self.n, self.m)


register(MagnitudeNM())
