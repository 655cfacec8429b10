"""The allocation problem: for every unit and candidate ratio, its damage and its saving.

Damage comes from the sensitivity curves (:func:`explorer.sensitivity.scan`, cached): accuracy drop
+ ``loss_weight`` x loss increase, made monotone in the ratio and interpolated between scanned
ratios. Savings come from the target kind: what each unit at each ratio saves of the target's
metric alone, as a fraction of the dense model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer import sensitivity as sens
from explorer.allocate.targets import SavingsContext, TargetKind, prunable_weights
from explorer.distributed import Executor
from explorer.errors import PlanError
from explorer.methods import Method
from explorer.plan import check_ratio
from explorer.progress import Progress
from explorer.sensitivity.engines import engine_for
from explorer.subject import Subject

__all__ = [
    "STRUCTURED_RATIOS",
    "UNSTRUCTURED_RATIOS",
    "Problem",
    "build_problem",
    "curve_ratios",
]

UNSTRUCTURED_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
STRUCTURED_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_FINE_STEP = 0.01  # unstructured choices between scanned ratios (damage interpolated)
_FINE_STEP_STRUCTURED = 0.05


@dataclass
class Problem:
    subject: Subject
    method: Method
    kind: TargetKind
    units: dict[str, list[str]]
    choices: dict[str, np.ndarray]  # ratios, 0 first
    damage: dict[str, np.ndarray]  # objective per choice
    drop: dict[str, np.ndarray]  # predicted accuracy drop per choice
    saving: dict[str, np.ndarray]  # fraction of the dense metric saved per choice (alone)
    dense_accuracy: float
    curves: pd.DataFrame
    round_to: int | None = None  # the plans' kept channels rounded up to a multiple of it
    curves_on: Subject | None = None  # the subset view the curves were scanned on; None: all data

    @property
    def max_saving(self) -> float:
        return float(sum(s.max() for s in self.saving.values()))


def _envelope(values: np.ndarray) -> np.ndarray:
    """Non-negative and non-decreasing: pruning more is never predicted to help."""
    return np.maximum.accumulate(np.maximum(values, 0.0))


def curve_ratios(method: Method, ratios: Sequence[float] | None = None) -> list[float]:
    """The ratios an allocation with ``method`` scans its sensitivity curves at: ``ratios``, else
    the defaults (up to 0.98 unstructured, 0.9 structured); N:M has one pattern, a layer has it or
    not (0.5)."""
    default = STRUCTURED_RATIOS if method.structured else UNSTRUCTURED_RATIOS
    grid = sorted({check_ratio(r, "allocation ratio") for r in ratios or default} - {0.0})
    return [0.5] if method.kind == "semi-structured" else grid


def build_problem(
    subject: Subject,
    method: Method,
    kind: TargetKind,
    ratios: Sequence[float] | None,
    curves: pd.DataFrame | None,
    loss_weight: float,
    on_progress: Progress,
    round_to: int | None = None,
    executor: Executor | None = None,
    curves_on: Subject | None = None,
) -> Problem:
    """The problem of ``kind`` with ``method``; ``round_to`` (structured methods) rounds kept
    channels up to a multiple of it in the curves, the savings and the plans; ``executor``: where
    the sensitivity points are evaluated (here, or Ray tasks); ``curves_on``: a view of ``subject``
    on a subset of its evaluation data (``Subject.on_images``) to scan the curves on (their drops
    are then taken from the dense accuracy on all of it)."""
    kind.check_method(method)
    grid = curve_ratios(method, ratios)
    if curves_on is subject:
        curves_on = None
    if curves is None:
        on_progress(0.0, f"sensitivity curves ({method.name})")
        curves = sens.scan(
            curves_on or subject,
            method.name,
            grid,
            round_to=round_to,
            executor=executor,
            on_progress=lambda f, m: on_progress((0.6 if kind.timed else 0.9) * f, m),
        )
    units = sens.units(subject, method.name)
    dense_rows = curves[curves.ratio == 0]
    if dense_rows.empty:
        raise PlanError("the sensitivity curves have no ratio-0 (dense) rows")
    dense_acc = (
        float(dense_rows.accuracy.iloc[0])
        if curves_on is None
        else float(subject.dense()[0].accuracy)  # the subset's drops, from all data's accuracy
    )
    ctx = SavingsContext(
        subject=subject,
        method=method,
        grid=grid,
        on_progress=on_progress,
        engine=engine_for(subject, method) if method.structured else None,
        total_weights=prunable_weights(subject.model, subject.layer_names)[0],
        round_to=round_to,
    )
    kind.prepare(ctx)
    choices, damage, drop, saving = {}, {}, {}, {}
    for name in units:
        c = curves[curves.layer == name].sort_values("ratio")
        if c.empty:
            raise PlanError(f"the sensitivity curves have no rows for {name!r}")
        r = c.ratio.to_numpy(dtype=float)
        acc_drop = _envelope(c.accuracy.iloc[0] - c.accuracy.to_numpy(dtype=float))
        loss_up = _envelope(c.loss.to_numpy(dtype=float) - c.loss.iloc[0])
        if method.kind == "semi-structured" or not kind.fine_choices:
            ch = r
        else:  # choose on a finer grid, damage interpolated between scanned ratios
            step = _FINE_STEP_STRUCTURED if method.structured else _FINE_STEP
            ch = np.unique(np.concatenate([r, np.round(np.arange(0, r.max() + 1e-9, step), 4)]))
        d = np.interp(ch, r, acc_drop)
        damage[name] = d + loss_weight * np.interp(ch, r, loss_up)
        drop[name] = d
        choices[name] = ch
        saving[name] = kind.savings(ctx, name, r, ch)
    return Problem(
        subject,
        method,
        kind,
        units,
        choices,
        damage,
        drop,
        saving,
        dense_acc,
        curves,
        round_to,
        curves_on,
    )
