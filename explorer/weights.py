"""What a pruning method does to one layer's weights: masks, thresholds, channel scores, statistics.

The masks are those of the real pruning code: unstructured and N:M masks are read off the layer
pruned by ``Subject.prune``; structured channel choices use the group importance Torch-Pruning
ranks channels by, with the same cut as ``explorer.prune``. Nothing here modifies the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from explorer.errors import PlanError
from explorer.inspect import PRUNABLE_TYPES, build_dependency_graph, structured_groups
from explorer.methods import ChannelMethod, get_method
from explorer.plan import LayerRule, PruningPlan, check_ratio
from explorer.prune import fresh_copy
from explorer.subject import Subject

__all__ = [
    "NEAR_ZERO",
    "LayerView",
    "channel_importance",
    "layer_view",
    "removed_channels",
    "weight_stats",
]

NEAR_ZERO = 0.01  # "near zero": |w| below this fraction of the layer's largest |w|


@dataclass(frozen=True)
class LayerView:
    """One layer under one method and ratio. Arrays have the weight's shape unless noted."""

    name: str
    method: str
    kind: str  # the method's kind: unstructured, semi-structured or structured
    ratio: float
    weights: np.ndarray  # float32, before pruning
    keep: np.ndarray  # bool: False where the weight is zeroed or its output channel removed
    after: np.ndarray  # float32: the weights after pruning (updated ones too, for SparseGPT)
    threshold: float | None  # the magnitude cut when the mask is one (|w| <= threshold go)
    channel_scores: np.ndarray | None  # structured: importance per output channel, shape (out,)
    removed: np.ndarray | None  # structured: indices of the removed output channels

    @property
    def pruned_share(self) -> float:
        return float(1.0 - self.keep.mean()) if self.keep.size else 0.0


def _module(model: nn.Module, name: str) -> nn.Module:
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, PRUNABLE_TYPES):
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
        raise PlanError(f"unknown layer {name!r}; prunable layers are: {', '.join(names)}")
    return module


def channel_importance(subject: Subject, name: str, method: str | ChannelMethod) -> np.ndarray:
    """Importance of each output channel of ``name``'s dependency group under a structured method.

    This is the score the method ranks channels by (lowest goes first). Builds a DepGraph on a
    fresh copy of the model: a fraction of a second to ~1 s on the zoo models.

    Raises:
        PlanError: the layer is in no dependency group (its channels cannot be removed), or the
            method is not structured.
    """
    m = get_method(method)
    if not isinstance(m, ChannelMethod):
        raise PlanError(f"{m.name} zeroes weights; it has no channel scores")
    _module(subject.model, name)  # raises PlanError naming the layers when unknown
    info = subject.inventory[name]
    if info.group is None:
        why = subject.inventory.structured_error or info.note
        raise PlanError(f"layer {name!r} cannot lose output channels ({why})")
    work = fresh_copy(subject.model)
    work.requires_grad_(True)
    dg = build_dependency_graph(work, subject.example_input)
    score = m.scorer(work, subject.calibration)
    for group, members in structured_groups(dg, work):
        if name in members:
            imp = score(group)
            return imp.detach().numpy().astype(np.float64)
    raise PlanError(f"layer {name!r}: no dependency group found for it in this model")


def removed_channels(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Indices of the channels a structured method removes at ``ratio`` (at least one stays)."""
    n = len(scores)
    n_prune = min(int(check_ratio(ratio, "ratio") * n), n - 1)
    if n_prune <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(torch.from_numpy(scores).argsort()[:n_prune].numpy())


def layer_view(
    subject: Subject, name: str, method: str, ratio: float, scores: np.ndarray | None = None
) -> LayerView:
    """The mask ``method`` at ``ratio`` puts on layer ``name`` when only that layer is pruned.

    Args:
        scores: the structured channel importance if already computed (see channel_importance).
    """
    m = get_method(method)
    ratio = check_ratio(ratio, f"layer {name!r}")
    weight = _module(subject.model, name).weight.detach()
    w = weight.numpy().astype(np.float32)
    channel_scores = removed = None
    threshold: float | None = None
    if m.structured:
        channel_scores = scores if scores is not None else channel_importance(subject, name, m)
        removed = removed_channels(channel_scores, ratio)
        keep = np.ones_like(w, dtype=bool)
        keep[removed] = False
        after = w * keep
    else:
        pruned = subject.prune(PruningPlan(method=method, layers={name: LayerRule(ratio)}))
        pw = _module(pruned, name).weight.detach().numpy()
        after = pw.astype(np.float32)
        keep = ~(
            (pw == 0) & (w != 0)
        )  # weights the method zeroed (zeros already there stay "kept")
        gone, kept = np.abs(w[~keep]), np.abs(w[keep])
        if gone.size and kept.size and gone.max() <= kept.min():
            threshold = float(gone.max())  # the mask is a magnitude cut
    return LayerView(
        name=name,
        method=method,
        kind=m.kind,
        ratio=ratio,
        weights=w,
        keep=keep,
        after=after,
        threshold=threshold,
        channel_scores=channel_scores,
        removed=removed,
    )


def weight_stats(model: nn.Module) -> pd.DataFrame:
    """Per prunable layer: shape, weight count, mean, std, min, max and the share near zero."""
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        w = module.weight.detach().double()
        peak = float(w.abs().max()) if w.numel() else 0.0
        rows.append(
            {
                "layer": name,
                "shape": " x ".join(map(str, w.shape)),
                "weights": w.numel(),
                "mean": float(w.mean()),
                "std": float(w.std()) if w.numel() > 1 else 0.0,
                "min": float(w.min()),
                "max": float(w.max()),
                "near_zero": float((w.abs() < NEAR_ZERO * peak).double().mean()) if peak else 1.0,
            }
        )
    return pd.DataFrame(
        rows, columns=["layer", "shape", "weights", "mean", "std", "min", "max", "near_zero"]
    )
