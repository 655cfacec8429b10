"""Magnitude: the smallest weights matter least (Han et al. 2015); ``torch.nn.utils.prune``'s L1."""

from __future__ import annotations

import torch

from explorer.methods import register
from explorer.methods.base import LayerContext, WeightMethod


class L1Unstructured(WeightMethod):
    name = "l1-unstructured"
    summary = "zero the weights of smallest magnitude"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return ctx.weight.abs()


register(L1Unstructured())
