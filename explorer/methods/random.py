"""Chance: weights chosen at random, the baseline every criterion should beat."""

from __future__ import annotations

import torch

from explorer.methods import register
from explorer.methods.base import LayerContext, WeightMethod


class RandomUnstructured(WeightMethod):
    name = "random-unstructured"
    summary = "zero weights chosen at random (seeded): the baseline magnitude should beat"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return torch.rand(ctx.weight.shape, generator=ctx.generator())


register(RandomUnstructured())
