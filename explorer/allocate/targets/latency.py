"""Latency: the measured ONNX Runtime latency is at most F x the dense model's, timed alternately
with it in one window (``explorer.runtime.measure_speedup``). Structured methods only (zeros do
not make dense kernels faster).

The achieved value is the pruned model's share of the dense latency in the *slowest* of the
window's rounds (the upper bound of the per-round shares), so a target is met only when every
round is within it. That is the rule of the app's cards: a met target (F < 1) is always a speedup
whose rounds all lie above 1.0x, never one "within noise". Kept channels are rounded up to the
CPU's fast multiple by default (``explorer.latency.fast_multiple``), and the savings of every
group are its measured latency curve at those widths.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from explorer.allocate.meter import Meter
from explorer.allocate.targets import SavingsContext, TargetKind, latency_saving, register
from explorer.latency import latency_curves


class Latency(TargetKind):
    name = "latency"
    label = "ORT latency (share of dense kept)"
    cli_help = "fraction of the dense ONNX Runtime median latency to keep (measured), e.g. 0.7"
    needs_structured = True
    timed = True
    rounds_channels = True
    tolerance = 0.03
    fine_choices = False  # latency is measured at the scanned ratios only

    def prepare(self, ctx: SavingsContext) -> None:
        ctx.on_progress(0.6, "latency curves")
        ctx.extra["latency"] = latency_curves(
            ctx.subject,
            ctx.method.name,
            ctx.grid,
            round_to=ctx.round_to,
            on_progress=lambda f, m: ctx.on_progress(0.6 + 0.3 * f, m),
        )

    def achieved_unit(self, size_metric: str = "") -> str:
        return "of the dense ORT latency in the slowest round (timed alternately with it)"

    def savings(
        self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        curves = ctx.extra["latency"]
        return latency_saving(curves[curves.layer == unit].sort_values("ratio"))

    def measure(self, meter: Meter, model: nn.Module) -> float:
        return meter.latency(model).latency_share.high


register(Latency())
