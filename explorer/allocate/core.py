"""The allocation loop: solve, measure, ask again; compare with the simple baselines; verify."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from explorer import sensitivity as sens
from explorer.allocate.knapsack import solve
from explorer.allocate.meter import Meter
from explorer.allocate.owl import owl_ratios
from explorer.allocate.problem import Problem, build_problem, curve_ratios
from explorer.allocate.targets import TargetKind, get_target
from explorer.distributed import Executor
from explorer.errors import PlanError
from explorer.evaluate import Evaluation, evaluate_torch, samples_per_call
from explorer.inputs import run_model
from explorer.latency import fast_multiple
from explorer.live import wilson
from explorer.methods import Method, get_method, layer_is_hookable
from explorer.plan import LayerRule, PruningPlan, check_round_to
from explorer.progress import Progress, no_progress
from explorer.runtime import Speedup
from explorer.subject import Subject

__all__ = [
    "FLAG_POINTS",
    "Allocation",
    "CurveSubset",
    "Target",
    "allocate",
    "default_method",
    "pareto_frame",
    "pareto_front",
]

FLAG_POINTS = 0.02  # predicted vs verified accuracy: flag a difference above 2 points


@dataclass(frozen=True)
class Target:
    """What an allocation must reach: a registered kind and its value (see
    ``explorer.allocate.targets``)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", get_target(self.kind).check(self.value))

    @property
    def kind_spec(self) -> TargetKind:
        return get_target(self.kind)

    @property
    def saving(self) -> float:
        """The fraction of the dense metric to remove."""
        return self.kind_spec.saving(self.value)

    def met_by(self, achieved: float) -> bool:
        return self.kind_spec.met_by(self.value, achieved)

    def describe(self) -> str:
        return self.kind_spec.describe(self.value)


@dataclass(frozen=True)
class CurveSubset:
    """The curves were measured on ``images`` of the ``total`` evaluation samples (a seeded
    subset, ``Subject.on_images``), and the plan checked against all of them: its accuracy on the
    subset (``accuracy``) gives a 95 % interval for its accuracy on all (finite-population Wilson,
    ``interval``), which the verified accuracy on all should fall in. None: not verified."""

    images: int
    total: int
    accuracy: float | None = None
    interval: tuple[float, float] | None = None

    def holds(self, verified: float | None) -> bool | None:
        """Whether ``verified`` (on all samples) is inside the subset's interval."""
        if verified is None or self.interval is None:
            return None
        lo, hi = self.interval
        return lo - 1e-9 <= verified <= hi + 1e-9

    def describe(self, verified: float | None, what: str = "accuracy") -> str:
        """One sentence for the CLI and the page: the subset, and whether it predicted ``verified``
        (``what``: "accuracy", or "agreement" for unlabelled data)."""
        head = (
            f"curves measured on {self.images} of the {self.total} evaluation samples (a seeded"
            " subset)"
        )
        if self.accuracy is None or self.interval is None or verified is None:
            return f"{head}; the plan is not verified on all of them"
        lo, hi = self.interval
        text = (
            f"{head}; the plan's {what} on them, {100 * self.accuracy:.2f}%, puts all"
            f" {self.total} at {100 * lo:.1f}-{100 * hi:.1f}% (95 %), and on all it is"
            f" {100 * verified:.2f}%"
        )
        if self.holds(verified):
            return text + ": inside"
        return (
            text + ": outside, so the subset does not represent the data for this plan; allocate"
            " on more samples"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "total": self.total,
            "accuracy": self.accuracy,
            "interval": list(self.interval) if self.interval is not None else None,
        }


@dataclass(frozen=True)
class Allocation:
    """An allocation and how it did. ``achieved`` is measured, in the target's unit."""

    plan: PruningPlan
    target: Target
    achieved: float
    met: bool
    predicted_accuracy: float
    verified_accuracy: float | None  # None when not verified
    dense_accuracy: float
    rounds: int  # knapsack solves until the measured value met the target
    evaluation: Evaluation | None = None  # Subject.evaluate of the plan (None when not verified)
    size_metric: str = ""  # "onnx_bytes" or "onnx_gzip_bytes" for size targets
    chosen: str = (
        "knapsack"  # or the simple baseline that scored higher ("uniform", "global magnitude")
    )
    candidates: dict[str, float] = field(
        default_factory=dict
    )  # accuracy of each candidate compared
    speedup: Speedup | None = (
        None  # timed targets: the interleaved timing that decided ``achieved``
    )
    curves_on: CurveSubset | None = None  # curves measured on a subset (None: on all samples)

    @property
    def compared_on(self) -> str:
        """Where the candidates (``candidates``) were scored, in the words the CLI and page use."""
        if self.curves_on is None:
            return "the evaluation data"
        return f"the curves' {self.curves_on.images} samples"

    @property
    def representative(self) -> bool | None:
        """Curves on a subset: whether the verified accuracy on all samples is inside the interval
        the plan's accuracy on the subset gives (None: curves on all samples, or not verified)."""
        return None if self.curves_on is None else self.curves_on.holds(self.verified_accuracy)

    @property
    def gap(self) -> float | None:
        """Predicted minus verified accuracy."""
        return (
            None
            if self.verified_accuracy is None
            else self.predicted_accuracy - self.verified_accuracy
        )

    @property
    def flagged(self) -> bool:
        """Predicted and verified accuracy differ by more than :data:`FLAG_POINTS`."""
        return self.gap is not None and abs(self.gap) > FLAG_POINTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": {"kind": self.target.kind, "value": self.target.value},
            "achieved": self.achieved,
            "met": self.met,
            "predicted_accuracy": self.predicted_accuracy,
            "verified_accuracy": self.verified_accuracy,
            "dense_accuracy": self.dense_accuracy,
            "gap": self.gap,
            "flagged": self.flagged,
            "rounds": self.rounds,
            "size_metric": self.size_metric,
            "chosen": self.chosen,
            "candidates": self.candidates,
            "plan": self.plan.to_dict(),
            "metrics": self.evaluation.to_dict() if self.evaluation is not None else {},
            "speedup": self.speedup.to_dict() if self.speedup is not None else None,
            "curves_on": self.curves_on.to_dict() if self.curves_on is not None else None,
            "representative": self.representative,
        }


def default_method(kind: str) -> str:
    """The kind's default: unstructured magnitude for sparsity, channel removal for the others."""
    return get_target(kind).default_method


def _round_to(kind: TargetKind, method: Method, round_to: int | None) -> int | None:
    """The rounding of an allocation's plans: as asked (1: none), else the CPU's fast multiple for
    kinds that round (latency) with structured methods."""
    if round_to is not None:
        round_to = check_round_to(round_to, "round_to")
        if round_to > 1 and not method.structured:
            raise PlanError(
                f"round_to rounds kept channel counts; {method.name} removes no channels"
            )
        return round_to if round_to > 1 else None
    return fast_multiple() if kind.rounds_channels and method.structured else None


def _plan(problem: Problem, picks: dict[str, int]) -> PruningPlan:
    layers: dict[str, LayerRule] = {}
    for name, c in picks.items():
        ratio = float(problem.choices[name][c])
        if ratio > 0:
            for member in problem.units[name]:
                layers[member] = LayerRule(round(ratio, 4))
    return PruningPlan(
        method=problem.method.name,
        layers=layers,
        model=problem.subject.model_spec,
        round_to=problem.round_to if layers else None,
    )


def _predicted(problem: Problem, picks: dict[str, int]) -> float:
    lost = sum(float(problem.drop[n][c]) for n, c in picks.items())
    return max(0.0, problem.dense_accuracy - lost)


def _as_target(target: Target | tuple[str, float]) -> Target:
    return target if isinstance(target, Target) else Target(target[0], target[1])


def _allocate(
    problem: Problem,
    target: Target,
    max_rounds: int,
    verify: bool,
    on_progress: Progress,
    meter: Meter,
) -> Allocation:
    kind = target.kind_spec
    goal = target.saving
    if problem.max_saving < goal - 1e-9:
        reach = kind.achieved_text(problem.max_saving)
        raise PlanError(
            f"target {target.describe()} is out of reach for {problem.method.name} on this model: "
            f"pruning every unit at its largest ratio reaches about {reach}"
        )
    ask = goal
    lo = hi = None  # savings asked of the knapsack that missed / met the target
    # (predicted damage, picks, achieved, its timing) of the best plan that met it, and of the last
    # one
    best: tuple[float, dict[str, int], float, Speedup | None] | None = None
    last: tuple[dict[str, int], float, Speedup | None] | None = None
    rounds, asked = 0, set()
    for rounds in range(1, max_rounds + 1):
        asked.add(round(ask, 6))
        picks = solve(problem.damage, problem.saving, ask)
        if picks is None:
            break
        on_progress(0.9 + 0.05 * rounds / max_rounds, f"round {rounds}: measuring the plan")
        achieved = meter(_plan(problem, picks))
        last = (picks, achieved, meter.last)
        got = kind.saved(achieved)  # measured saving
        if target.met_by(achieved):
            damage = sum(float(problem.damage[n][c]) for n, c in picks.items())
            if best is None or damage < best[0]:
                best = (damage, picks, achieved, meter.last)
            hi = ask
            if got - goal <= kind.tolerance:
                break
            ask = (
                (lo + hi) / 2 if lo is not None else max(0.0, ask - (got - goal))
            )  # overshoot: ask less
        else:
            lo = ask
            predicted = sum(float(problem.saving[n][c]) for n, c in picks.items())
            # Ask for more than these picks were predicted to save, by what the measure lacked.
            ask = (
                (lo + hi) / 2
                if hi is not None
                else min(problem.max_saving, max(ask, predicted) + (goal - got) + 0.002)
            )
        if round(ask, 6) in asked:
            break
    if best is not None:
        _, picks, achieved, timing = best
    elif last is not None:
        picks, achieved, timing = last
    else:
        raise PlanError(f"no allocation reaches {target.describe()} with {problem.method.name}")
    plan = _plan(problem, picks)
    predicted = _predicted(problem, picks)
    chosen, candidates = "knapsack", {}
    if target.kind == "sparsity" and problem.method.kind == "unstructured":
        on_progress(0.96, "comparing with the simple baselines")
        plan, predicted, achieved, chosen, candidates = _best_of(
            problem, target, plan, predicted, achieved, meter
        )
    evaluation = None
    verified = None
    subset = _curve_subset(problem)
    if verify:
        on_progress(0.97, "verifying the plan")
        evaluation = problem.subject.evaluate(plan)
        verified = float(evaluation.pruned.accuracy)
        if subset is not None and problem.curves_on is not None:
            subset = _checked(subset, problem.curves_on, problem.subject.prune(plan))
    on_progress(1.0, "done")
    return Allocation(
        plan=plan,
        target=target,
        achieved=achieved,
        met=target.met_by(achieved),
        predicted_accuracy=predicted,
        verified_accuracy=verified,
        dense_accuracy=problem.dense_accuracy,
        rounds=rounds,
        evaluation=evaluation,
        size_metric=meter.size_metric,
        chosen=chosen,
        candidates=candidates,
        speedup=timing,
        curves_on=subset,
    )


def _curve_subset(problem: Problem) -> CurveSubset | None:
    view = problem.curves_on
    if view is None:
        return None
    return CurveSubset(len(view.data.test), len(problem.subject.data.test))


def _checked(subset: CurveSubset, view: Subject, model: nn.Module) -> CurveSubset:
    """``subset`` with the plan's (``model``'s) accuracy on the subset and its interval for all."""
    accuracy = evaluate_torch(model, view.data.test, _torch_reference(view))[0]
    k = round(accuracy * subset.images)
    interval = wilson(k, subset.images, population=subset.total)
    return dataclasses.replace(subset, accuracy=accuracy, interval=interval)


def _torch_reference(subject: Subject) -> np.ndarray | None:
    """The dense model's PyTorch logits on unlabelled evaluation data (what agreement is scored
    against); None for labelled data."""
    split = subject.data.test
    if split.y is not None:
        return None
    with torch.no_grad():
        n = samples_per_call(split.x)
        parts = [run_model(subject.model, split.x[i : i + n]) for i in range(0, len(split), n)]
        return torch.cat(parts).numpy()


def _baselines(problem: Problem, sparsity: float) -> dict[str, PruningPlan]:
    """The plans a sparsity allocation is compared with, each meeting ``sparsity`` on its own: the
    same ratio in every layer; one global ranking of the method's scores (for magnitude, PyTorch's
    ``global_unstructured``, whose masks equal per-layer masks at the ratios it reaches in each
    layer); and OWL's outlier-weighted layer-wise ratios (``explorer.allocate.owl``)."""
    subject, method = problem.subject, problem.method
    modules = dict(subject.model.named_modules())
    names = list(problem.units)

    def per_layer(ratios: dict[str, float]) -> PruningPlan:
        return PruningPlan(
            method=method.name,
            layers={n: LayerRule(r) for n, r in ratios.items() if r > 0},
            model=subject.model_spec,
        )

    # The same ratio everywhere, rounded up per layer so the total reaches the target.
    out = {
        "uniform": per_layer(
            {
                n: min(
                    math.ceil(sparsity * modules[n].weight.numel() - 1e-9)
                    / modules[n].weight.numel(),
                    0.9999,
                )
                for n in names
            }
        )
    }
    if method.name == "l1-unstructured":
        scores = torch.cat([modules[n].weight.detach().abs().reshape(-1) for n in names])
        k = round(sparsity * scores.numel())
        if k:
            threshold = scores.kthvalue(k).values
            out["global magnitude"] = per_layer(
                {
                    n: min(
                        float((modules[n].weight.detach().abs() <= threshold).sum())
                        / modules[n].weight.numel(),
                        0.9999,
                    )
                    for n in names
                }
            )
    elif method.supports_global:
        out["global ranking"] = PruningPlan(
            method=method.name,
            layers={n: LayerRule(sparsity) for n in names},
            scope="global",
            ratio=sparsity,
            model=subject.model_spec,
        )
    hookable = [n for n in names if layer_is_hookable(n, subject.inventory) is None]
    if subject.calibration is not None and len(hookable) == len(names) and len(names) > 1:
        out["OWL"] = per_layer(owl_ratios(subject, names, sparsity))
    return out


def _best_of(
    problem: Problem,
    target: Target,
    plan: PruningPlan,
    predicted: float,
    achieved: float,
    meter: Meter,
) -> tuple[PruningPlan, float, float, str, dict[str, float]]:
    """The knapsack's plan, unless another plan that also meets the target scores higher on the
    evaluation data (possible where the curves' sum predicts badly, e.g. when every option
    collapses): on the samples the curves were measured on, so a subset's allocation chooses on
    the subset and is verified on all. Returns (plan, predicted, achieved, chosen, accuracy of
    every candidate)."""
    subject = problem.subject
    judge = problem.curves_on or subject
    split = judge.data.test
    reference = _torch_reference(judge)
    accuracy = {"knapsack": evaluate_torch(subject.prune(plan), split, reference)[0]}
    best = ("knapsack", plan, predicted, achieved)
    for name, candidate in _baselines(problem, target.value).items():
        value = meter(candidate)
        if not target.met_by(value):
            continue
        model = subject.prune(candidate)
        accuracy[name] = evaluate_torch(model, split, reference)[0]
        if accuracy[name] > accuracy[best[0]]:
            ratios = _layer_sparsity(model, list(problem.units))
            drop = sum(
                float(np.interp(ratios[n], problem.choices[n], problem.drop[n]))
                for n in problem.units
            )
            best = (name, candidate, max(0.0, problem.dense_accuracy - drop), value)
    chosen, plan, predicted, achieved = best
    return plan, predicted, achieved, chosen, accuracy


def _layer_sparsity(model: nn.Module, names: list[str]) -> dict[str, float]:
    modules = dict(model.named_modules())
    return {
        n: 1.0 - int(torch.count_nonzero(modules[n].weight)) / modules[n].weight.numel()
        for n in names
    }


def allocate(
    subject: Subject,
    target: Target | tuple[str, float],
    method: str | None = None,
    *,
    ratios: Sequence[float] | None = None,
    curves: pd.DataFrame | None = None,
    loss_weight: float = 0.05,
    max_rounds: int = 8,
    verify: bool = True,
    round_to: int | None = None,
    on_progress: Progress = no_progress,
    executor: Executor | None = None,
    curve_images: int | None = None,
) -> Allocation:
    """Per-layer ratios that reach ``target`` with the least predicted accuracy loss, measured and
    verified.

    Args:
        target: a :class:`Target` or ``(kind, value)``, e.g. ``("sparsity", 0.8)``.
        method: the pruning method; :func:`default_method` of the target when None.
        ratios: the ratios the curves are scanned at (defaults: up to 0.98 unstructured, 0.9
            structured); unstructured choices also fall between them.
        curves: sensitivity curves of ``method`` to use instead of scanning (``scan``'s columns).
        loss_weight: weight of the loss increase in the damage (separates units whose coarse
            accuracy drop ties).
        max_rounds: knapsack solves at most, when measured values miss the target.
        verify: evaluate the plan (``Subject.evaluate``: ONNX export, ONNX Runtime accuracy).
        round_to: structured methods: kept channels rounded up to a multiple of it (the plan's
            ``round_to``; 1: none). None: the CPU's fast multiple for targets that round
            (latency; ``explorer.latency.fast_multiple``), no rounding for the others.
        executor: where the sensitivity points are evaluated (here, or Ray tasks: the same points).
        curve_images: scan the curves on this many of the evaluation samples (a seeded subset,
            ``Subject.on_images``; a scan costs in proportion); the targets are measured and the
            plan verified on all of them, and the result says whether the plan's accuracy on the
            subset predicted that on all (``Allocation.curves_on``). None: every sample.

    Side effects: runs (and caches) sensitivity scans; writes temporary ONNX files.

    Raises:
        PlanError: a bad target, a target the method cannot reach or measure, an untraceable model
            for a structured method.
    """
    tgt = _as_target(target)
    m = get_method(method or default_method(tgt.kind))
    problem = build_problem(
        subject,
        m,
        tgt.kind_spec,
        ratios,
        curves,
        loss_weight,
        on_progress,
        _round_to(tgt.kind_spec, m, round_to),
        executor,
        _curves_on(subject, curve_images),
    )
    meter = Meter(subject, tgt, m)
    try:
        return _allocate(problem, tgt, max_rounds, verify, on_progress, meter)
    finally:
        meter.close()
        _release(problem)


def _curves_on(subject: Subject, curve_images: int | None) -> Subject | None:
    if curve_images is None:
        return None
    if isinstance(curve_images, bool) or not isinstance(curve_images, int) or curve_images < 1:
        raise PlanError(f"curve_images must be a positive number of samples, got {curve_images!r}")
    view = subject.on_images(curve_images)
    return None if view is subject else view


def _release(problem: Problem) -> None:
    """Drop the subset view's scan engines (its curves are cached on disk; the engines hold
    sessions and activations, and a reference to the view)."""
    if problem.curves_on is not None:
        sens.release(problem.curves_on)


@dataclass(frozen=True)
class CurveNeeds:
    """The sensitivity points an allocation starts from, before it starts: ``left`` of them still to
    scan (the expensive part from an empty cache), ``cached`` already on disk (any earlier scan of
    the same model, data, method, ratios and rounding counts, the Sensitivity page's too)."""

    method: str
    ratios: tuple[float, ...]
    round_to: int | None
    left: int
    cached: int
    images: int = 0  # evaluation samples each point is measured on


def curve_needs(
    subject: Subject,
    kind: str,
    method: str | None = None,
    *,
    ratios: Sequence[float] | None = None,
    round_to: int | None = None,
    curve_images: int | None = None,
) -> CurveNeeds:
    """What :func:`allocate` with these arguments scans; reads the cache only (instant)."""
    spec = get_target(kind)
    m = get_method(method or spec.default_method)
    rounding = _round_to(spec, m, round_to)  # checked in allocate's order: the same first error
    spec.check_method(m)
    grid = curve_ratios(m, ratios)
    on = _curves_on(subject, curve_images) or subject
    left, cached = sens.pending(on, m.name, grid, round_to=rounding)
    return CurveNeeds(m.name, tuple(grid), rounding, left, cached, len(on.data.test))


def pareto_front(
    subject: Subject,
    kind: str,
    values: Sequence[float],
    method: str | None = None,
    *,
    ratios: Sequence[float] | None = None,
    loss_weight: float = 0.05,
    max_rounds: int = 8,
    verify: bool = True,
    round_to: int | None = None,
    on_progress: Progress = no_progress,
    executor: Executor | None = None,
    curve_images: int | None = None,
) -> list[Allocation]:
    """Allocations for several values of one kind of target (curves computed once), by value.

    Plot ``achieved`` against ``verified_accuracy`` for the trade-off; targets out of reach are
    skipped. ``curve_images``: as in :func:`allocate`.
    """
    spec = get_target(kind)  # validates the kind
    m = get_method(method or spec.default_method)
    problem = build_problem(
        subject,
        m,
        spec,
        ratios,
        None,
        loss_weight,
        lambda f, msg: on_progress(0.5 * f, msg),
        _round_to(spec, m, round_to),
        executor,
        _curves_on(subject, curve_images),
    )
    out = []
    for i, value in enumerate(sorted(values)):
        tgt = Target(kind, value)
        meter = Meter(subject, tgt, m)
        try:
            out.append(
                _allocate(
                    problem,
                    tgt,
                    max_rounds,
                    verify,
                    lambda f, msg, i=i: on_progress(0.5 + 0.5 * (i + f) / len(values), msg),
                    meter,
                )
            )
        except PlanError:
            continue
        finally:
            meter.close()
    _release(problem)
    on_progress(1.0, "done")
    return out


def pareto_frame(allocations: Sequence[Allocation]) -> pd.DataFrame:
    """One row per allocation, for plotting the trade-off: ``target, value, achieved, met,
    predicted_accuracy, verified_accuracy, flagged, chosen, layers, on_front`` (``on_front``: no
    other allocation has both a better-or-equal saving and a higher verified accuracy)."""
    rows = []
    for a in allocations:
        acc = a.verified_accuracy if a.verified_accuracy is not None else a.predicted_accuracy
        saved = a.target.kind_spec.saved(
            a.achieved
        )  # compare on savings, whatever the kind's direction
        rows.append(
            {
                "target": a.target.kind,
                "value": a.target.value,
                "achieved": a.achieved,
                "met": a.met,
                "predicted_accuracy": a.predicted_accuracy,
                "verified_accuracy": a.verified_accuracy,
                "flagged": a.flagged,
                "chosen": a.chosen,
                "layers": len(a.plan.layers),
                "saved_": saved,
                "score_": acc,
            }
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "target",
            "value",
            "achieved",
            "met",
            "predicted_accuracy",
            "verified_accuracy",
            "flagged",
            "chosen",
            "layers",
            "saved_",
            "score_",
        ],
    )
    frame["on_front"] = [
        not any(
            (o.saved_ >= r.saved_ and o.score_ > r.score_)
            or (o.saved_ > r.saved_ and o.score_ >= r.score_)
            for o in frame.itertuples()
            if o.Index != r.Index
        )
        for r in frame.itertuples()
    ]
    return frame.drop(columns=["saved_", "score_"])
