"""Automatic allocation: per-layer ratios for a target, minimising the accuracy loss the curves predict.

Four kinds of target; ``value`` F means:

============  ==================================================================================
``sparsity``  at least F of the prunable layers' weights are zero (unstructured, N:M) or removed
              (structured). 0.8 = 80% of the weights gone.
``macs``      the pruned model does at most F x the dense multiply-accumulates (0.5 = half).
              Structured methods only: zeros do not remove work from dense kernels.
``size``      the ONNX file is at most F x the dense one: its bytes for structured methods, its
              gzip-compressed bytes for unstructured and N:M methods (zeros only shrink the
              compressed file).
``latency``   the measured ONNX Runtime median latency is at most F x the dense model's, both
              timed in the same run. Structured methods only.
============  ==================================================================================

How (AIMET's workflow, with a knapsack instead of its equal-accuracy search):

1. Curves: :func:`explorer.sensitivity.scan` (cached) gives each unit's accuracy and loss
   against ratio; damage = accuracy drop + ``loss_weight`` x loss increase, made monotone in the
   ratio and interpolated between scanned ratios.
2. Savings: what each unit at each ratio saves of the target's metric alone, as a fraction of the
   dense model: counted exactly from the masks (sparsity), counted on the model with only that
   group pruned (structured params and MACs), gzip of the masked weights (unstructured size),
   measured latency curves (latency).
3. A multiple-choice knapsack (dynamic programming over discretised savings) picks one ratio per
   unit minimising the summed damage with the summed savings at least the target's.
4. The plan's real value is measured (counted on the pruned model, or its exported ONNX file, or
   timed); if it misses, the savings asked of the knapsack are raised by the shortfall and it is
   solved again (savings of coupled groups are not additive; latency is noisy). Too large an
   overshoot is bisected back.
5. Sparsity targets with unstructured methods: the plan is compared on the evaluation data with
   the two simple baselines that meet the target too (the same ratio in every layer; one global
   magnitude threshold, PyTorch's ``global_unstructured``) and the most accurate is kept
   (``Allocation.chosen``). The knapsack wins where the curves predict well; a baseline can win
   where every option collapses and their sum predicts nothing.
6. The plan is verified with :meth:`Subject.evaluate`: predicted accuracy (dense minus the summed
   drops) is reported next to the verified one and flagged when they differ by more than 2 points.
"""

from __future__ import annotations

import gzip
import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from explorer import sensitivity as sens
from explorer.errors import PlanError
from explorer.evaluate import evaluate_torch
from explorer.inspect import count_macs
from explorer.latency import latency_curves
from explorer.plan import LayerRule, PruningPlan, check_ratio
from explorer.progress import Progress, no_progress
from explorer.methods import Method, get_method
from explorer.prune import kept_channels, pruned_weight
from explorer.runtime import OrtModel, export_onnx, gzip_size, measure_latency
from explorer.sensitivity.engines import engine_for
from explorer.sensitivity.engines.depgraph import StructuredEngine
from explorer.subject import Subject

__all__ = [
    "FLAG_POINTS",
    "KINDS",
    "Allocation",
    "Target",
    "allocate",
    "default_method",
    "pareto_frame",
    "pareto_front",
]

Kind = Literal["sparsity", "macs", "size", "latency"]
KINDS: tuple[Kind, ...] = ("sparsity", "macs", "size", "latency")
FLAG_POINTS = 0.02  # predicted vs verified accuracy: flag a difference above 2 points
UNSTRUCTURED_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
STRUCTURED_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_FINE_STEP = 0.01  # unstructured choices between scanned ratios (damage interpolated)
_FINE_STEP_STRUCTURED = 0.05
_BUCKETS = 2000  # resolution of the knapsack's savings, over the savings asked for


@dataclass(frozen=True)
class Target:
    """What an allocation must reach; see the module docstring for what ``value`` means."""

    kind: Kind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlanError(f"unknown target {self.kind!r}; choose from {list(KINDS)}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < float(v) < 1:
            what = "fraction of weights to zero" if self.kind == "sparsity" else f"fraction of the dense {self.kind} to keep"
            raise PlanError(f"--target-{self.kind} must be a {what}, strictly between 0 and 1; got {v!r}")

    @property
    def saving(self) -> float:
        """The fraction of the dense metric to remove."""
        return self.value if self.kind == "sparsity" else 1.0 - self.value

    def met_by(self, achieved: float) -> bool:
        """Within a millionth: ``round(F x weights)`` zeros (PyTorch's rule) meets sparsity F."""
        return achieved >= self.value - 1e-6 if self.kind == "sparsity" else achieved <= self.value + 1e-6

    def describe(self) -> str:
        if self.kind == "sparsity":
            return f"sparsity >= {self.value:.1%}"
        return f"{self.kind} <= {self.value:.1%} of dense"


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
    metrics: dict[str, Any] = field(default_factory=dict)  # Subject.evaluate of the plan
    size_metric: str = ""  # "onnx_bytes" or "onnx_gzip_bytes" for size targets
    chosen: str = "knapsack"  # or the simple baseline that scored higher ("uniform", "global magnitude")
    candidates: dict[str, float] = field(default_factory=dict)  # accuracy of each candidate compared

    @property
    def gap(self) -> float | None:
        """Predicted minus verified accuracy."""
        return None if self.verified_accuracy is None else self.predicted_accuracy - self.verified_accuracy

    @property
    def flagged(self) -> bool:
        """Predicted and verified accuracy differ by more than :data:`FLAG_POINTS`."""
        return self.gap is not None and abs(self.gap) > FLAG_POINTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": {"kind": self.target.kind, "value": self.target.value},
            "achieved": self.achieved, "met": self.met, "predicted_accuracy": self.predicted_accuracy,
            "verified_accuracy": self.verified_accuracy, "dense_accuracy": self.dense_accuracy,
            "gap": self.gap, "flagged": self.flagged, "rounds": self.rounds, "size_metric": self.size_metric,
            "chosen": self.chosen, "candidates": self.candidates,
            "plan": self.plan.to_dict(), "metrics": self.metrics,
        }


def default_method(kind: Kind) -> str:
    """Unstructured magnitude pruning for sparsity; channel removal for MACs, size and latency."""
    return "l1-unstructured" if kind == "sparsity" else "l1-structured"


# --- the problem: damage and savings per unit and choice -----------------------------------------


@dataclass
class _Problem:
    subject: Subject
    method: Method
    kind: Kind
    units: dict[str, list[str]]
    choices: dict[str, np.ndarray]  # ratios, 0 first
    damage: dict[str, np.ndarray]  # objective per choice
    drop: dict[str, np.ndarray]  # predicted accuracy drop per choice
    saving: dict[str, np.ndarray]  # fraction of the dense metric saved per choice (alone)
    dense_accuracy: float
    curves: pd.DataFrame

    @property
    def max_saving(self) -> float:
        return float(sum(s.max() for s in self.saving.values()))


def _envelope(values: np.ndarray) -> np.ndarray:
    """Non-negative and non-decreasing: pruning more is never predicted to help."""
    return np.maximum.accumulate(np.maximum(values, 0.0))


def _prunable_weights(model: nn.Module, names: Sequence[str]) -> tuple[int, int]:
    """(elements, nonzero elements) of the weights of the layers ``names`` that ``model`` has."""
    modules = dict(model.named_modules())
    total = nonzero = 0
    for n in names:
        if n in modules:
            w = modules[n].weight
            total += w.numel()
            nonzero += int(torch.count_nonzero(w))
    return total, nonzero


def _problem(subject: Subject, method: Method, kind: Kind, ratios: Sequence[float] | None,
             curves: pd.DataFrame | None, loss_weight: float, on_progress: Progress) -> _Problem:
    if kind in ("macs", "latency") and not method.structured:
        raise PlanError(f"a {kind} target needs a structured method (l1-structured, l2-structured): {method.name} "
                        "only zeroes weights, which dense kernels still multiply")
    grid = sorted({check_ratio(r, "allocation ratio") for r in (ratios or (
        STRUCTURED_RATIOS if method.structured else UNSTRUCTURED_RATIOS))} - {0.0})
    if method.kind == "semi-structured":
        grid = [0.5]  # N:M has one pattern: a layer has it or not
    with_latency = kind == "latency"
    if curves is None:
        on_progress(0.0, f"sensitivity curves ({method.name})")
        curves = sens.scan(subject, method.name, grid,
                           on_progress=lambda f, m: on_progress((0.6 if with_latency else 0.9) * f, m))
    units = sens.units(subject, method.name)
    modules = dict(subject.model.named_modules())
    dense_rows = curves[curves.ratio == 0]
    if dense_rows.empty:
        raise PlanError("the sensitivity curves have no ratio-0 (dense) rows")
    dense_acc = float(dense_rows.accuracy.iloc[0])
    choices, damage, drop, saving = {}, {}, {}, {}
    latency = None
    if with_latency:
        on_progress(0.6, "latency curves")
        latency = latency_curves(subject, method.name, grid, on_progress=lambda f, m: on_progress(0.6 + 0.3 * f, m))
    total_w, _ = _prunable_weights(subject.model, subject.layer_names)
    total_macs = max(subject.inventory.total_macs, 1)
    dense_gzip = None
    if kind == "size":
        dense_metrics, _ = subject.dense()
        dense_gzip = dense_metrics.onnx_gzip_bytes if not method.structured else dense_metrics.onnx_bytes
    eng = engine_for(subject, method) if method.structured else None
    for name in units:
        c = curves[curves.layer == name].sort_values("ratio")
        if c.empty:
            raise PlanError(f"the sensitivity curves have no rows for {name!r}")
        r = c.ratio.to_numpy(dtype=float)
        acc_drop = _envelope(c.accuracy.iloc[0] - c.accuracy.to_numpy(dtype=float))
        loss_up = _envelope(c.loss.to_numpy(dtype=float) - c.loss.iloc[0])
        if method.kind == "semi-structured" or kind == "latency":
            ch = r  # latency: only measured points (channel alignment makes it a staircase)
        else:  # choose on a finer grid, damage interpolated between scanned ratios
            step = _FINE_STEP_STRUCTURED if method.structured else _FINE_STEP
            ch = np.unique(np.concatenate([r, np.round(np.arange(0, r.max() + 1e-9, step), 4)]))
        d = np.interp(ch, r, acc_drop)
        damage[name] = d + loss_weight * np.interp(ch, r, loss_up)
        drop[name] = d
        choices[name] = ch
        if not method.structured:
            w = modules[name].weight.detach()
            masked = [pruned_weight(method, subject.model, name, float(x), calibration=subject.calibration)
                      for x in ch]
            if kind == "sparsity":
                nz = int(torch.count_nonzero(w))
                saving[name] = np.array([(nz - int(torch.count_nonzero(m))) / total_w for m in masked])
            else:  # size: what the masked weight's bytes lose under gzip
                base = len(gzip.compress(w.numpy().tobytes(), 6))
                assert dense_gzip
                saving[name] = np.array([(base - len(gzip.compress(m.numpy().tobytes(), 6))) / dense_gzip
                                         for m in masked])
        elif kind == "latency":
            assert latency is not None
            lc = latency[latency.layer == name].sort_values("ratio")
            dense_ms = max(float(lc.latency_ms_median.iloc[0]), 1e-9)
            saving[name] = np.maximum(0.0, (dense_ms - lc.latency_ms_median.to_numpy(dtype=float)) / dense_ms)
        else:
            assert isinstance(eng, StructuredEngine)
            # One group alone: params and MACs fall linearly with the channels removed, so count
            # them at the scanned ratios and interpolate on the number of channels removed.
            n = eng.channels(name)
            vals = []
            for x in r:
                if x == 0:
                    vals.append(0.0)
                    continue
                pruned = eng.pruned(name, float(x), None, method)
                if kind == "sparsity":
                    vals.append((total_w - _prunable_weights(pruned, subject.layer_names)[1]) / total_w)
                elif kind == "macs":
                    vals.append((total_macs - sum(count_macs(pruned, subject.example_input).values())) / total_macs)
                else:  # size: four bytes per removed parameter
                    removed = sum(p.numel() for p in subject.model.parameters()) - sum(p.numel() for p in pruned.parameters())
                    assert dense_gzip
                    vals.append(4 * removed / dense_gzip)
            removed_at = [n - kept_channels(n, float(x)) for x in r]
            saving[name] = np.maximum(0.0, np.interp([n - kept_channels(n, float(x)) for x in ch], removed_at, vals))
    return _Problem(subject, method, kind, units, choices, damage, drop, saving, dense_acc, curves)


def _solve(problem: _Problem, need: float) -> dict[str, int] | None:
    """Choice index per unit minimising summed damage with summed saving >= ``need``; None if
    impossible. Savings are rounded down to 1/_BUCKETS of ``need``, so the sum is never overstated."""
    names = list(problem.units)
    if need <= 0:
        return {n: 0 for n in names}
    big = _BUCKETS
    dp = np.full(big + 1, np.inf)
    dp[0] = 0.0
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for name in names:
        best = np.full(big + 1, np.inf)
        best_c = np.zeros(big + 1, dtype=np.int64)
        best_prev = np.zeros(big + 1, dtype=np.int64)
        steps = np.minimum(np.floor(problem.saving[name] / need * big + 1e-9), big).astype(np.int64)
        for c, (s, dmg) in enumerate(zip(steps, problem.damage[name])):
            cand = np.full(big + 1, np.inf)
            prev = np.zeros(big + 1, dtype=np.int64)
            if s < big:
                cand[s:big] = dp[: big - s] + dmg
                prev[s:big] = np.arange(big - s)
            lo = max(big - s, 0)
            k = int(np.argmin(dp[lo:]))
            cand[big] = dp[lo + k] + dmg
            prev[big] = lo + k
            better = cand < best - 1e-12  # ties keep the smaller ratio (earlier choice)
            best = np.where(better, cand, best)
            best_c = np.where(better, c, best_c)
            best_prev = np.where(better, prev, best_prev)
        dp = best
        back.append((best_c, best_prev))
    if not np.isfinite(dp[big]):
        return None
    picks: dict[str, int] = {}
    state = big
    for name, (cs, prevs) in zip(reversed(names), reversed(back)):
        picks[name] = int(cs[state])
        state = int(prevs[state])
    return picks


def _plan(problem: _Problem, picks: dict[str, int]) -> PruningPlan:
    layers: dict[str, LayerRule] = {}
    for name, c in picks.items():
        ratio = float(problem.choices[name][c])
        if ratio > 0:
            for member in problem.units[name]:
                layers[member] = LayerRule(round(ratio, 4))
    return PruningPlan(method=problem.method.name, layers=layers, model=problem.subject.model_spec)


def _predicted(problem: _Problem, picks: dict[str, int]) -> float:
    lost = sum(float(problem.drop[n][c]) for n, c in picks.items())
    return max(0.0, problem.dense_accuracy - lost)


# --- measuring a plan ------------------------------------------------------------------------------


class _Meter:
    """Measures a plan's value for the target (the side effect: temporary ONNX files)."""

    def __init__(self, subject: Subject, target: Target, method: Method, rounds_of_timing: int = 3) -> None:
        self.subject, self.target, self.method = subject, target, method
        self.rounds_of_timing = rounds_of_timing
        self.tmp = tempfile.TemporaryDirectory(prefix="explorer-allocate-")
        self.size_metric = ""
        self._dense_session: OrtModel | None = None
        if target.kind == "size":
            self.size_metric = "onnx_bytes" if method.structured else "onnx_gzip_bytes"

    def close(self) -> None:
        self.tmp.cleanup()

    def _size(self, model: nn.Module, name: str) -> int:
        path = export_onnx(model, self.subject.example_input, Path(self.tmp.name) / name)
        return path.stat().st_size if self.size_metric == "onnx_bytes" else gzip_size(path)

    def __call__(self, plan: PruningPlan) -> float:
        subject = self.subject
        model = subject.prune(plan)
        kind = self.target.kind
        if kind == "sparsity":
            total, _ = _prunable_weights(subject.model, subject.layer_names)
            return 1.0 - _prunable_weights(model, subject.layer_names)[1] / total
        if kind == "macs":
            return sum(count_macs(model, subject.example_input).values()) / max(subject.inventory.total_macs, 1)
        if kind == "size":
            return self._size(model, "pruned.onnx") / self._size(subject.model, "dense.onnx")
        return self._latency_ratio(model)

    def _latency_ratio(self, model: nn.Module) -> float:
        """Pruned over dense median latency, the two timed in alternation to share the machine's state."""
        x = self.subject.example_input
        if self._dense_session is None:
            path = export_onnx(self.subject.model, x, Path(self.tmp.name) / "dense.onnx")
            self._dense_session = OrtModel(path, threads=self.subject.threads)
        pruned = OrtModel(export_onnx(model, x, Path(self.tmp.name) / "pruned.onnx"), threads=self.subject.threads)
        dense_ms, pruned_ms = [], []
        for _ in range(self.rounds_of_timing):
            dense_ms.append(measure_latency(self._dense_session, x.numpy(), runs=self.subject.runs).median_ms)
            pruned_ms.append(measure_latency(pruned, x.numpy(), runs=self.subject.runs).median_ms)
        return statistics.median(pruned_ms) / statistics.median(dense_ms)


# --- allocation ------------------------------------------------------------------------------------


def _as_target(target: Target | tuple[str, float]) -> Target:
    return target if isinstance(target, Target) else Target(target[0], target[1])  # type: ignore[arg-type]


def _allocate(problem: _Problem, target: Target, max_rounds: int, verify: bool, on_progress: Progress,
              meter: _Meter) -> Allocation:
    goal = target.saving
    if problem.max_saving < goal - 1e-9:
        best = _achieved_text(target, problem.max_saving)
        raise PlanError(f"target {target.describe()} is out of reach for {problem.method.name} on this model: "
                        f"pruning every unit at its largest ratio reaches about {best}")
    ask = goal
    lo = hi = None  # savings asked of the knapsack that missed / met the target
    best: tuple[float, dict[str, int], float] | None = None  # (predicted damage, picks, achieved) that met it
    last: tuple[dict[str, int], float] | None = None
    tolerance = 0.03 if target.kind == "latency" else 0.01
    rounds, asked = 0, set()
    for rounds in range(1, max_rounds + 1):
        asked.add(round(ask, 6))
        picks = _solve(problem, ask)
        if picks is None:
            break
        on_progress(0.9 + 0.05 * rounds / max_rounds, f"round {rounds}: measuring the plan")
        achieved = meter(_plan(problem, picks))
        last = (picks, achieved)
        got = achieved if target.kind == "sparsity" else 1.0 - achieved  # measured saving
        if target.met_by(achieved):
            damage = sum(float(problem.damage[n][c]) for n, c in picks.items())
            if best is None or damage < best[0]:
                best = (damage, picks, achieved)
            hi = ask
            if got - goal <= tolerance:
                break
            ask = (lo + hi) / 2 if lo is not None else max(0.0, ask - (got - goal))  # overshoot: ask less
        else:
            lo = ask
            predicted = sum(float(problem.saving[n][c]) for n, c in picks.items())
            # Ask for more than these picks were predicted to save, by what the measure lacked.
            ask = (lo + hi) / 2 if hi is not None else min(problem.max_saving, max(ask, predicted) + (goal - got) + 0.002)
        if round(ask, 6) in asked:
            break
    if best is not None:
        _, picks, achieved = best
    elif last is not None:
        picks, achieved = last
    else:
        raise PlanError(f"no allocation reaches {target.describe()} with {problem.method.name}")
    plan = _plan(problem, picks)
    predicted = _predicted(problem, picks)
    chosen, candidates = "knapsack", {}
    if target.kind == "sparsity" and problem.method.kind == "unstructured":
        on_progress(0.96, "comparing with the simple baselines")
        plan, predicted, achieved, chosen, candidates = _best_of(problem, target, plan, predicted, achieved, meter)
    metrics: dict[str, Any] = {}
    verified = None
    if verify:
        on_progress(0.97, "verifying the plan")
        metrics = problem.subject.evaluate(plan)
        verified = float(metrics["accuracy"])
    on_progress(1.0, "done")
    return Allocation(plan=plan, target=target, achieved=achieved, met=target.met_by(achieved),
                      predicted_accuracy=predicted, verified_accuracy=verified, dense_accuracy=problem.dense_accuracy,
                      rounds=rounds, metrics=metrics, size_metric=meter.size_metric, chosen=chosen,
                      candidates=candidates)


def _baseline_ratios(problem: _Problem, sparsity: float) -> dict[str, dict[str, float]]:
    """Per-layer ratios of the two simple baselines at ``sparsity``: the same ratio everywhere, and
    one magnitude threshold over every prunable weight (PyTorch's ``global_unstructured``; its
    masks equal per-layer masks at the ratios it reaches in each layer)."""
    modules = dict(problem.subject.model.named_modules())
    names = list(problem.units)
    # The same ratio everywhere, rounded up per layer so the total reaches the target.
    out = {"uniform": {n: min(math.ceil(sparsity * modules[n].weight.numel() - 1e-9) / modules[n].weight.numel(), 0.9999)
                       for n in names}}
    if problem.method.name == "l1-unstructured":
        scores = torch.cat([modules[n].weight.detach().abs().reshape(-1) for n in names])
        k = round(sparsity * scores.numel())
        if k:
            threshold = scores.kthvalue(k).values
            out["global magnitude"] = {n: min(float((modules[n].weight.detach().abs() <= threshold).sum())
                                              / modules[n].weight.numel(), 0.9999) for n in names}
    return out


def _best_of(problem: _Problem, target: Target, plan: PruningPlan, predicted: float, achieved: float,
             meter: _Meter) -> tuple[PruningPlan, float, float, str, dict[str, float]]:
    """The knapsack's plan, unless a simple baseline that also meets the target scores higher on
    the evaluation data (possible where the curves' sum predicts badly, e.g. when every option
    collapses). Returns (plan, predicted, achieved, chosen, accuracy of every candidate)."""
    subject = problem.subject
    split = subject.data.test
    reference = None
    if split.y is None:
        with torch.no_grad():
            reference = torch.cat([subject.model(split.x[i : i + 512]) for i in range(0, len(split), 512)]).numpy()
    accuracy = {"knapsack": evaluate_torch(subject.prune(plan), split, reference)[0]}
    best = ("knapsack", plan, predicted, achieved)
    for name, ratios in _baseline_ratios(problem, target.value).items():
        candidate = PruningPlan(method=problem.method.name, layers={n: LayerRule(r) for n, r in ratios.items() if r > 0},
                                model=subject.model_spec)
        value = meter(candidate)
        if not target.met_by(value):
            continue
        accuracy[name] = evaluate_torch(subject.prune(candidate), split, reference)[0]
        if accuracy[name] > accuracy[best[0]]:
            drop = sum(float(np.interp(ratios[n], problem.choices[n], problem.drop[n])) for n in problem.units)
            best = (name, candidate, max(0.0, problem.dense_accuracy - drop), value)
    chosen, plan, predicted, achieved = best
    return plan, predicted, achieved, chosen, accuracy


def _achieved_text(target: Target, saving: float) -> str:
    if target.kind == "sparsity":
        return f"{saving:.1%} sparsity"
    return f"{max(0.0, 1 - saving):.1%} of the dense {target.kind}"


def allocate(subject: Subject, target: Target | tuple[str, float], method: str | None = None, *,
             ratios: Sequence[float] | None = None, curves: pd.DataFrame | None = None,
             loss_weight: float = 0.05, max_rounds: int = 8, verify: bool = True,
             on_progress: Progress = no_progress) -> Allocation:
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

    Side effects: runs (and caches) sensitivity scans; writes temporary ONNX files.

    Raises:
        PlanError: a bad target, a target the method cannot reach or measure, an untraceable model
            for a structured method.
    """
    tgt = _as_target(target)
    m = get_method(method or default_method(tgt.kind))
    problem = _problem(subject, m, tgt.kind, ratios, curves, loss_weight, on_progress)
    meter = _Meter(subject, tgt, m)
    try:
        return _allocate(problem, tgt, max_rounds, verify, on_progress, meter)
    finally:
        meter.close()


def pareto_front(subject: Subject, kind: Kind, values: Sequence[float], method: str | None = None, *,
                 ratios: Sequence[float] | None = None, loss_weight: float = 0.05, max_rounds: int = 8,
                 verify: bool = True, on_progress: Progress = no_progress) -> list[Allocation]:
    """Allocations for several values of one kind of target (curves computed once), by value.

    Plot ``achieved`` against ``verified_accuracy`` for the trade-off; targets out of reach are
    skipped.
    """
    m = get_method(method or default_method(kind))
    Target(kind, values[0] if values else 0.5)  # validates the kind
    problem = _problem(subject, m, kind, ratios, None, loss_weight, lambda f, msg: on_progress(0.5 * f, msg))
    out = []
    for i, value in enumerate(sorted(values)):
        tgt = Target(kind, value)
        meter = _Meter(subject, tgt, m)
        try:
            out.append(_allocate(problem, tgt, max_rounds, verify,
                                 lambda f, msg, i=i: on_progress(0.5 + 0.5 * (i + f) / len(values), msg), meter))
        except PlanError:
            continue
        finally:
            meter.close()
    on_progress(1.0, "done")
    return out


def pareto_frame(allocations: Sequence[Allocation]) -> pd.DataFrame:
    """One row per allocation, for plotting the trade-off: ``target, value, achieved, met,
    predicted_accuracy, verified_accuracy, flagged, chosen, layers, on_front`` (``on_front``: no
    other allocation has both a better-or-equal achieved value and a higher verified accuracy)."""
    rows = []
    for a in allocations:
        acc = a.verified_accuracy if a.verified_accuracy is not None else a.predicted_accuracy
        # Lower is better for macs/size/latency (fraction kept); higher for sparsity: compare on savings.
        saved = a.achieved if a.target.kind == "sparsity" else 1.0 - a.achieved
        rows.append({"target": a.target.kind, "value": a.target.value, "achieved": a.achieved, "met": a.met,
                     "predicted_accuracy": a.predicted_accuracy, "verified_accuracy": a.verified_accuracy,
                     "flagged": a.flagged, "chosen": a.chosen, "layers": len(a.plan.layers), "saved_": saved,
                     "score_": acc})
    frame = pd.DataFrame(rows, columns=["target", "value", "achieved", "met", "predicted_accuracy", "verified_accuracy",
                                        "flagged", "chosen", "layers", "saved_", "score_"])
    frame["on_front"] = [not any((o.saved_ >= r.saved_ and o.score_ > r.score_) or (o.saved_ > r.saved_ and o.score_ >= r.score_)
                                 for o in frame.itertuples() if o.Index != r.Index) for r in frame.itertuples()]
    return frame.drop(columns=["saved_", "score_"])
