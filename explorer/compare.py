"""Two configurations side by side: their metrics, their per-layer ratios, and how far the
sensitivity curves' prediction of their accuracy is from the measured one.

The prediction is the one the allocation makes (``explorer.allocate``): the dense accuracy minus
the sum over units (layers, or dependency groups for structured methods) of the accuracy each unit
alone loses at its ratio, read off its one-unit sensitivity curve (linear between the scanned
ratios; never predicted to help). Layers interact, so the measured accuracy may be lower: the
difference is what the comparison shows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["METRICS", "metric_rows", "predict_accuracy", "ratio_rows"]

# (key, label, kind): what the comparison lists, in this order.
METRICS = (
    ("accuracy", "accuracy", "pct"),
    ("loss", "loss", "float"),
    ("params_total", "parameters", "int"),
    ("params_nonzero", "nonzero parameters", "int"),
    ("macs", "MACs", "int"),
    ("onnx_bytes", "ONNX bytes", "int"),
    ("onnx_gzip_bytes", "ONNX gzip bytes", "int"),
    ("latency_ms_median", "latency median (ms)", "ms"),
    ("latency_ms_p90", "latency p90 (ms)", "ms"),
)


def predict_accuracy(ratios: Mapping[str, float], curves: pd.DataFrame) -> float | None:
    """Accuracy predicted from one-unit sensitivity curves for per-layer ``ratios``.

    ``curves`` is a ``sensitivity.scan`` frame (``layer`` is the unit, ``members`` its layers,
    ratio 0 its dense row). A unit takes the largest ratio of its members. Returns None when a
    ratio lies beyond the largest ratio scanned for its unit (the curve says nothing there).
    """
    if curves.empty:
        return None
    dense = float(curves.loc[curves.ratio == 0, "accuracy"].iloc[0])
    lost = 0.0
    for unit, rows in curves.groupby("layer", sort=False):
        rows = rows.sort_values("ratio")
        members = str(rows["members"].iloc[0]).split(",") if "members" in rows else [str(unit)]
        ratio = max((float(ratios.get(m, 0.0)) for m in members), default=0.0)
        if ratio <= 0:
            continue
        xs, accs = rows["ratio"].to_numpy(float), rows["accuracy"].to_numpy(float)
        if ratio > xs.max() + 1e-9:
            return None
        drops = np.maximum.accumulate(np.maximum(accs[0] - accs, 0.0))  # never predicted to help
        lost += float(np.interp(ratio, xs, drops))
    return max(0.0, dense - lost)


def metric_rows(a: Mapping[str, float], b: Mapping[str, float]) -> list[dict[str, object]]:
    """One row per metric: A, B and B - A (accuracy in percent, latency in ms) and its ``kind``
    (pct, float, int, ms: how to format it)."""
    rows = []
    for key, label, kind in METRICS:
        if key not in a or key not in b:
            continue
        scale = 100.0 if kind == "pct" else 1.0
        va, vb = float(a[key]) * scale, float(b[key]) * scale
        rows.append(
            {
                "metric": label + (" (%)" if kind == "pct" else ""),
                "kind": kind,
                "A": va,
                "B": vb,
                "B - A": vb - va,
            }
        )
    return rows


def ratio_rows(
    layers: list[str], a: Mapping[str, float], b: Mapping[str, float]
) -> list[dict[str, object]]:
    """One row per layer: the share A and B take from it (percent) and the difference."""
    return [
        {
            "layer": n,
            "A (%)": 100 * a.get(n, 0.0),
            "B (%)": 100 * b.get(n, 0.0),
            "B - A (points)": 100 * (b.get(n, 0.0) - a.get(n, 0.0)),
        }
        for n in layers
    ]
