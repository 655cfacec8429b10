"""A toy criterion in its own file, registered by being imported ($PRUNING_EXPLORER_PLUGINS): the
largest weights go first (the opposite of magnitude pruning), so it must do worse than l1."""

from __future__ import annotations

import torch

from explorer.methods import LayerContext, WeightMethod, register


class LargestFirst(WeightMethod):
    name = "toy-largest-first"
    summary = (
        "zero the weights of largest magnitude (a toy criterion: the opposite of magnitude pruning)"
    )

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return -ctx.weight.abs()


register(LargestFirst())
