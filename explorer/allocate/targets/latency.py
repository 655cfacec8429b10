"""Latency: the measured ONNX Runtime median latency is at most F x the dense model's, both timed in
the same run. Structured methods only (zeros do not make dense kernels faster)."""

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
    tolerance = 0.03
    fine_choices = False  # latency is measured at the scanned ratios only

    def prepare(self, ctx: SavingsContext) -> None:
        ctx.on_progress(0.6, "latency curves")
        ctx.extra["latency"] = latency_curves(ctx.subject, ctx.method.name, ctx.grid,
                                              on_progress=lambda f, m: ctx.on_progress(0.6 + 0.3 * f, m))

    def achieved_unit(self, size_metric: str = "") -> str:
        return "of the dense ORT latency (median, timed alongside it)"

    def savings(self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray) -> np.ndarray:
        curves = ctx.extra["latency"]
        return latency_saving(curves[curves.layer == unit].sort_values("ratio"))

    def measure(self, meter: Meter, model: nn.Module) -> float:
        return meter.latency_ratio(model)


register(Latency())
