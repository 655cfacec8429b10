"""MACs: the pruned model does at most F x the dense multiply-accumulates (0.5 = half). Structured
methods only: zeros do not remove work from dense kernels."""

from __future__ import annotations

import numpy as np
from torch import nn

from explorer.allocate.meter import Meter
from explorer.allocate.targets import SavingsContext, TargetKind, counted_savings, register
from explorer.inspect import count_macs


class Macs(TargetKind):
    name = "macs"
    label = "MACs (share of dense kept)"
    cli_help = "fraction of the dense MACs to keep, e.g. 0.5"
    needs_structured = True

    def achieved_unit(self, size_metric: str = "") -> str:
        return "of the dense MACs"

    def savings(
        self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        s = ctx.subject
        total = max(s.inventory.total_macs, 1)
        return counted_savings(
            ctx,
            unit,
            scanned,
            choices,
            lambda m: (total - sum(count_macs(m, s.example_input).values())) / total,
        )

    def measure(self, meter: Meter, model: nn.Module) -> float:
        s = meter.subject
        return sum(count_macs(model, s.example_input).values()) / max(s.inventory.total_macs, 1)


register(Macs())
