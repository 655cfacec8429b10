"""OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): non-uniform layer-wise sparsity from
the share of outliers in each layer's Wanda scores, an allocation heuristic shown beside ours.

A layer's outlier ratio is the share of its scores ``|W| * ||X||`` above ``M`` times their mean
(M = 5). The ratios are scaled to ``[0, 2 * lambda]`` (lambda = 0.08) and centred on the target
density, so a layer with many outliers keeps more of its weights and every layer's sparsity lies
within ``target +- lambda``. OWL's transformer blocks all have the same size, so centring on the
mean hits the target; here layers differ in size, so the centre is shifted (by bisection) until
the weighted sparsity is the target's.
"""

from __future__ import annotations

import numpy as np

from explorer.errors import PlanError
from explorer.methods import LayerContext
from explorer.methods.wanda import wanda_scores
from explorer.subject import Subject

__all__ = ["LAMBDA", "M", "outlier_ratios", "owl_ratios"]

M = 5.0
LAMBDA = 0.08


def outlier_ratios(subject: Subject, layers: list[str], m: float = M) -> dict[str, float]:
    """Per layer, the share of its Wanda scores above ``m`` times their mean."""
    if subject.calibration is None:
        raise PlanError("OWL reads Wanda scores, which need calibration data; this model has none")
    out = {}
    for name in layers:
        scores = wanda_scores(
            LayerContext(subject.model, name, calibration=subject.calibration), "OWL"
        )
        out[name] = float((scores > m * scores.mean()).double().mean())
    return out


def owl_ratios(
    subject: Subject, layers: list[str], sparsity: float, m: float = M, lam: float = LAMBDA
) -> dict[str, float]:
    """Per-layer ratios whose weighted sparsity is ``sparsity`` (OWL's rule, centred by size)."""
    outliers = outlier_ratios(subject, layers, m)
    d = np.array([outliers[n] for n in layers])
    spread = (
        (d - d.min()) / (d.max() - d.min()) * 2 * lam if d.max() > d.min() else np.zeros_like(d)
    )
    modules = dict(subject.model.named_modules())
    sizes = np.array([modules[n].weight.numel() for n in layers], dtype=np.float64)

    def ratios(shift: float) -> np.ndarray:
        # density = spread - mean(spread) + (1 - sparsity) + shift, as OWL's code writes it
        return np.clip(1.0 - (spread - spread.mean() + (1.0 - sparsity) + shift), 0.0, 0.99)

    lo, hi = -1.0, 1.0  # a larger shift keeps more: sparsity falls
    for _ in range(60):
        mid = (lo + hi) / 2
        if float((ratios(mid) * sizes).sum() / sizes.sum()) > sparsity:
            lo = mid
        else:
            hi = mid
    r = ratios(lo)  # the side that reaches the target
    return {n: float(v) for n, v in zip(layers, r, strict=False)}
