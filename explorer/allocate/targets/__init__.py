"""Allocation targets: one registry, one file per kind of target.

A target kind says what ``value`` means (a fraction of the dense metric to keep, or of the weights
to remove), what it needs (a structured method for MACs and latency), how much each unit saves at
each ratio when pruned alone (the knapsack's weights) and how a whole plan is measured after the
fact. Every module of this package registers its kind when imported, as do the modules named in
``$PRUNING_EXPLORER_PLUGINS``: adding a target is one new file. The CLI's ``--target-NAME`` flags
and the app's choices come from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from explorer.errors import PlanError
from explorer.methods import Method
from explorer.plugins import load_package, load_plugins
from explorer.subject import Subject

if TYPE_CHECKING:
    from explorer.allocate.meter import Meter

__all__ = ["SavingsContext", "TargetKind", "get_target", "register", "target_kinds", "unregister"]


@dataclass
class SavingsContext:
    """What a target kind may read to work out the savings of one unit (built once per problem)."""

    subject: Subject
    method: Method
    grid: list[float]  # the scanned ratios
    on_progress: Callable[[float, str], None]
    engine: Any = None  # the structured engine (structured methods)
    total_weights: int = 0  # elements of every prunable weight
    round_to: int | None = None  # kept channels rounded up to a multiple of it (structured methods)
    extra: dict[str, Any] = field(default_factory=dict)  # what a kind computes once (prepare)


class TargetKind:
    """One kind of target. ``value`` is a fraction: of the dense metric to keep when ``keeps`` (at
    most
    that much stays), else of the weights to remove (at least that much goes)."""

    name: ClassVar[str]
    label: ClassVar[str]  # the app's choice
    cli_help: ClassVar[str]  # the CLI flag's help
    keeps: ClassVar[bool] = True
    needs_structured: ClassVar[bool] = False  # zeros do not change this metric
    timed: ClassVar[bool] = (
        False  # measured with a clock: noisy, never run concurrently with timing
    )
    tolerance: ClassVar[float] = 0.01  # overshoot of the measured saving that is good enough
    fine_choices: ClassVar[bool] = (
        True  # ratios between the scanned ones are choices too (savings interpolate)
    )
    rounds_channels: ClassVar[bool] = (
        False  # plans round kept channels to the CPU's fast multiple by default
    )
    default_method: ClassVar[str] = "l1-structured"

    # --- what value means ---------------------------------------------------------------------

    def check(self, value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < float(value) < 1
        ):
            what = (
                "fraction of weights to zero"
                if not self.keeps
                else f"fraction of the dense {self.name} to keep"
            )
            raise PlanError(
                f"target {self.name} must be a {what}, strictly between 0 and 1; got {value!r}"
            )
        return float(value)

    def saving(self, value: float) -> float:
        """The fraction of the dense metric to remove."""
        return 1.0 - value if self.keeps else value

    def saved(self, achieved: float) -> float:
        """The measured saving of an achieved value."""
        return 1.0 - achieved if self.keeps else achieved

    def met_by(self, value: float, achieved: float) -> bool:
        """Within a millionth: ``round(F x weights)`` zeros (PyTorch's rule) meets sparsity F."""
        return achieved <= value + 1e-6 if self.keeps else achieved >= value - 1e-6

    def describe(self, value: float) -> str:
        return (
            f"{self.name} <= {value:.1%} of dense" if self.keeps else f"{self.name} >= {value:.1%}"
        )

    def achieved_text(self, saving: float) -> str:
        return (
            f"{max(0.0, 1 - saving):.1%} of the dense {self.name}"
            if self.keeps
            else f"{saving:.1%} {self.name}"
        )

    def achieved_unit(self, size_metric: str = "") -> str:
        """What an achieved value is a share of, for a sentence ("62.0% of the dense MACs")."""
        return f"of the dense {self.name}"

    def check_method(self, method: Method) -> None:
        if self.needs_structured and not method.structured:
            raise PlanError(
                f"a {self.name} target needs a structured method (l1-structured, l2-structured): "
                f"{method.name} only zeroes weights, which dense kernels still multiply"
            )

    def size_metric(self, method: Method) -> str:
        """The metric of ``Subject.evaluate`` this target is measured in, where it is one ('' if
        not)."""
        return ""

    # --- savings and measurement --------------------------------------------------------------

    def prepare(self, ctx: SavingsContext) -> None:  # noqa: B027
        """Compute once what :meth:`savings` reads for every unit (e.g. latency curves)."""

    def savings(
        self, ctx: SavingsContext, unit: str, scanned: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        """The fraction of the dense metric that pruning ``unit`` alone at each of ``choices``
        saves."""
        raise NotImplementedError

    def measure(self, meter: Meter, model: nn.Module) -> float:
        """The achieved value of a pruned model, in the target's unit."""
        raise NotImplementedError


_TARGETS: dict[str, TargetKind] = {}
_loaded = False


def register(kind: TargetKind) -> TargetKind:
    _TARGETS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a target kind from the registry (a plugin's tests clean up after themselves)."""
    _TARGETS.pop(name, None)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        load_package(__name__)
    load_plugins()


def target_kinds() -> list[TargetKind]:
    """Every registered kind, the built-in ones first in their house order."""
    _load()
    order = {"sparsity": 0, "macs": 1, "size": 2, "latency": 3}
    return sorted(_TARGETS.values(), key=lambda k: (order.get(k.name, 9), k.name))


def get_target(name: str) -> TargetKind:
    _load()
    try:
        return _TARGETS[name]
    except (KeyError, TypeError):
        raise PlanError(
            f"unknown target {name!r}; choose from {[k.name for k in target_kinds()]}"
        ) from None


def latency_saving(curve: pd.DataFrame) -> np.ndarray:
    """Savings along one group's latency curve (rows by ratio, ratio 0 first): one minus its share
    of the dense latency, timed alternately with the dense model (median of the rounds)."""
    return np.maximum(0.0, 1.0 - curve.latency_share.to_numpy(dtype=float))


def prunable_weights(model: nn.Module, names: list[str]) -> tuple[int, int]:
    """(elements, nonzero elements) of the weights of the layers ``names`` that ``model`` has."""
    import torch

    modules = dict(model.named_modules())
    total = nonzero = 0
    for n in names:
        if n in modules:
            w = modules[n].weight
            total += w.numel()
            nonzero += int(torch.count_nonzero(w))
    return total, nonzero


def counted_savings(
    ctx: SavingsContext,
    unit: str,
    scanned: np.ndarray,
    choices: np.ndarray,
    saving_of: Callable[[nn.Module], float],
) -> np.ndarray:
    """Savings of a structured unit: ``saving_of`` the model with only that group pruned, counted at
    the scanned ratios and interpolated on the number of channels removed (params and MACs fall
    linearly with them)."""
    from explorer.prune import kept_channels

    n, rt = ctx.engine.channels(unit), ctx.round_to
    values = [
        0.0 if x == 0 else saving_of(ctx.engine.pruned(unit, float(x), rt, ctx.method))
        for x in scanned
    ]
    removed_at = [n - kept_channels(n, float(x), rt) for x in scanned]
    return np.maximum(
        0.0, np.interp([n - kept_channels(n, float(x), rt) for x in choices], removed_at, values)
    )


def _sorts_scores(method: Method) -> bool:
    """Whether ``method`` zeros the lowest of its scores (:meth:`WeightMethod.mask`, unchanged)."""
    from explorer.methods.base import WeightMethod

    return isinstance(method, WeightMethod) and (
        type(method).mask is WeightMethod.mask
        and type(method).prune_weight is WeightMethod.prune_weight
    )


def _boundary_ties(ordered: torch.Tensor, k: int) -> bool:
    """Whether the ``k``-th lowest sorted score equals the next one (``topk`` picks among them)."""
    return k < ordered.numel() and bool(ordered[k - 1] == ordered[k])


def masked_weights(ctx: SavingsContext, unit: str, choices: np.ndarray) -> Iterator[Any]:
    """The weights an unstructured or N:M method leaves in ``unit`` at each of ``choices``, one at a
    time: exactly :func:`explorer.prune.pruned_weight`'s.

    A method that zeros the lowest of its scores (:meth:`WeightMethod.mask`, unchanged) is scored
    once and its scores sorted once: the ``k`` lowest are then the first ``k`` of that order, unless
    the ``k``-th ties with the next one (then the mask is :func:`unstructured_mask`'s own, which
    picks among the ties). One ``topk`` per choice took 60 s of a 224-px ResNet-18's sparsity
    allocation (2,000 choices at 0.01 steps, 30 ms each on the largest layers)."""
    from explorer.methods.base import LayerContext, unstructured_mask
    from explorer.prune import pruned_weight

    s, method = ctx.subject, ctx.method
    if not _sorts_scores(method):
        for x in choices:
            yield pruned_weight(method, s.model, unit, float(x), calibration=s.calibration)
        return
    with torch.no_grad():
        layer = LayerContext(s.model, unit, 0, s.calibration)
        weight, scores = layer.weight, method.scores(layer)
        flat = scores.reshape(-1)
        ordered, order = torch.sort(flat, stable=True)
        exact = bool(torch.isnan(flat).any())  # topk's order of NaNs is its own
        for x in choices:
            k = round(float(x) * flat.numel())
            if k == 0:
                yield weight.clone()
            elif exact or _boundary_ties(ordered, k):
                yield weight * unstructured_mask(scores, float(x))
            else:
                keep = torch.ones_like(flat, dtype=torch.bool)
                keep[order[:k]] = False
                yield weight * keep.view_as(weight)


def _mixed(ordered: torch.Tensor, gone: torch.Tensor, k: int) -> bool:
    """Whether the weights whose score equals the ``k``-th lowest (sorted: ``ordered``; ``gone``:
    the running count of nonzero weights in that order) are some zero and some not."""
    t = ordered[k - 1]
    lo = int(torch.searchsorted(ordered, t, right=False))
    hi = int(torch.searchsorted(ordered, t, right=True))
    nonzero = int(gone[hi - 1]) - (int(gone[lo - 1]) if lo else 0)
    return 0 < nonzero < hi - lo


def masked_nonzeros(ctx: SavingsContext, unit: str, choices: np.ndarray) -> np.ndarray:
    """``count_nonzero`` of each of :func:`masked_weights`'s weights, from one stable sort of the
    scores: the nonzero weights left are those of the layer less the nonzero ones among the ``k``
    lowest (one cumulative sum per layer, against a mask, a product and a count per choice).
    Where the ``k``-th score ties with others, ``topk`` picks which of the tied ones go; that
    changes the count only if the tied weights mix zeros and nonzeros (never for magnitude, whose
    score is zero exactly for a zero weight), and only then is the masked weight itself counted,
    as it is for NaN scores and non-finite weights (``inf * 0`` is not zero)."""
    from explorer.methods.base import LayerContext, unstructured_mask

    def counted(xs: np.ndarray) -> list[int]:
        return [int(torch.count_nonzero(w)) for w in masked_weights(ctx, unit, xs)]

    s, method = ctx.subject, ctx.method
    if not _sorts_scores(method):
        return np.array(counted(choices), dtype=np.int64)
    with torch.no_grad():
        layer = LayerContext(s.model, unit, 0, s.calibration)
        weight, scores = layer.weight, method.scores(layer)
        flat = scores.reshape(-1)
        if bool(torch.isnan(flat).any()) or not bool(torch.isfinite(weight).all()):
            return np.array(counted(choices), dtype=np.int64)
        ordered, order = torch.sort(flat, stable=True)
        gone = torch.cumsum(weight.reshape(-1)[order] != 0, 0)  # nonzero among the k lowest
        nonzero = int(torch.count_nonzero(weight))
        out = []
        for x in choices:
            k = round(float(x) * flat.numel())
            if k == 0:
                out.append(nonzero)
            elif _boundary_ties(ordered, k) and _mixed(ordered, gone, k):
                out.append(int(torch.count_nonzero(weight * unstructured_mask(scores, float(x)))))
            else:
                out.append(nonzero - int(gone[k - 1]))
        return np.array(out, dtype=np.int64)
