"""Size: the ONNX file is at most F x the dense one: its bytes for structured methods, its
gzip-compressed bytes for unstructured and N:M methods (zeros only shrink the compressed file)."""

from __future__ import annotations

import gzip

import numpy as np
from torch import nn

from explorer.allocate.meter import Meter
from explorer.allocate.targets import (
    SavingsContext,
    TargetKind,
    counted_savings,
    masked_weights,
    register,
)
from explorer.methods import Method


class Size(TargetKind):
    name = "size"
    label = "ONNX size (share of dense kept)"
    cli_help = (
        "fraction of the dense ONNX size to keep (gzip bytes for unstructured methods), e.g. 0.5"
    )

    def size_metric(self, method: Method) -> str:
        return "onnx_bytes" if method.structured else "onnx_gzip_bytes"

    def prepare(self, ctx: SavingsContext) -> None:
        dense, _ = ctx.subject.dense()
        ctx.extra["dense_bytes"] = getattr(dense, self.size_metric(ctx.method))

    def achieved_unit(self, size_metric: str = "") -> str:
        return f"of the dense ONNX {'gzip bytes' if size_metric == 'onnx_gzip_bytes' else 'bytes'}"

    def savings(
        self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        dense_bytes = ctx.extra["dense_bytes"]
        s = ctx.subject
        if ctx.method.structured:  # four bytes per removed parameter
            params = sum(p.numel() for p in s.model.parameters())
            return counted_savings(
                ctx,
                unit,
                scanned,
                choices,
                lambda m: 4 * (params - sum(p.numel() for p in m.parameters())) / dense_bytes,
            )
        w = dict(s.model.named_modules())[unit].weight.detach()
        base = len(
            gzip.compress(w.numpy().tobytes(), 6)
        )  # what the masked weight's bytes lose under gzip
        return np.array(
            [
                (base - len(gzip.compress(m.numpy().tobytes(), 6))) / dense_bytes
                for m in masked_weights(ctx, unit, choices)
            ]
        )

    def measure(self, meter: Meter, model: nn.Module) -> float:
        return meter.size(model, "pruned.onnx") / meter.size(meter.subject.model, "dense.onnx")


register(Size())
