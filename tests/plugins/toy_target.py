"""A toy allocation target in its own file: the share of the dense parameter count to keep
(counted on the pruned model; structured methods, since zeros keep every parameter)."""

from __future__ import annotations

import numpy as np
from torch import nn

from explorer.allocate.meter import Meter
from explorer.allocate.targets import SavingsContext, TargetKind, counted_savings, register


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Params(TargetKind):
    name = "params"
    label = "parameters (share of dense kept)"
    cli_help = (
        "fraction of the dense parameter count to keep, e.g. 0.5 (a toy target from a plugin)"
    )
    needs_structured = True

    def savings(
        self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        dense = _params(ctx.subject.model)
        return counted_savings(ctx, unit, scanned, choices, lambda m: (dense - _params(m)) / dense)

    def measure(self, meter: Meter, model: nn.Module) -> float:
        return _params(model) / _params(meter.subject.model)


register(Params())
