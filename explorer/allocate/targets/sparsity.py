"""Sparsity: at least F of the prunable layers' weights are zero (unstructured, N:M) or removed
(structured). 0.8 = 80% of the weights gone."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from explorer.allocate.meter import Meter
from explorer.allocate.targets import (
    SavingsContext,
    TargetKind,
    counted_savings,
    masked_nonzeros,
    prunable_weights,
    register,
)


class Sparsity(TargetKind):
    name = "sparsity"
    label = "sparsity (share of weights removed)"
    cli_help = "fraction of the prunable weights to zero or remove, e.g. 0.8"
    keeps = False
    default_method = "l1-unstructured"

    def achieved_unit(self, size_metric: str = "") -> str:
        return "of the prunable weights zero or removed"

    def savings(
        self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        s = ctx.subject
        if ctx.method.structured:

            def removed(pruned: nn.Module) -> float:
                return (
                    ctx.total_weights - prunable_weights(pruned, s.layer_names)[1]
                ) / ctx.total_weights

            return counted_savings(ctx, unit, scanned, choices, removed)
        nz = int(torch.count_nonzero(dict(s.model.named_modules())[unit].weight))
        return (nz - masked_nonzeros(ctx, unit, choices)) / ctx.total_weights

    def measure(self, meter: Meter, model: nn.Module) -> float:
        s = meter.subject
        total, _ = prunable_weights(s.model, s.layer_names)
        return 1.0 - prunable_weights(model, s.layer_names)[1] / total


register(Sparsity())
