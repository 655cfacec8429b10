"""Automatic allocation: per-layer ratios for a target, minimising the accuracy loss the curves
predict.

Targets are a registry (:mod:`.targets`, one file per kind: adding one is one file). The four
built-in kinds; ``value`` F means:

============  ==================================================================================
``sparsity``  at least F of the prunable layers' weights are zero (unstructured, N:M) or removed
              (structured). 0.8 = 80% of the weights gone.
``macs``      the pruned model does at most F x the dense multiply-accumulates (0.5 = half).
              Structured methods only: zeros do not remove work from dense kernels.
``size``      the ONNX file is at most F x the dense one: its bytes for structured methods, its
              gzip-compressed bytes for unstructured and N:M methods (zeros only shrink the
              compressed file).
``latency``   the measured ONNX Runtime latency is at most F x the dense model's in every round
              of a window that times the two alternately (the slowest round decides, as the
              app's cards decide "within noise"). Structured methods only; kept channels are
              rounded up to the CPU's fast multiple unless ``round_to`` says otherwise.
============  ==================================================================================

How (AIMET's workflow, with a knapsack instead of its equal-accuracy search), module by module:

1. Curves (:mod:`.problem`): :func:`explorer.sensitivity.scan` (cached) gives each unit's accuracy
   and loss against ratio; damage = accuracy drop + ``loss_weight`` x loss increase, made monotone
   in the ratio and interpolated between scanned ratios.
2. Savings (the target kind's ``savings``): what each unit at each ratio saves of the target's
   metric alone, as a fraction of the dense model: counted exactly from the masks (sparsity),
   counted on the model with only that group pruned (structured params and MACs), gzip of the
   masked weights (unstructured size), measured latency curves (latency).
3. A multiple-choice knapsack (:mod:`.knapsack`; dynamic programming over discretised savings)
   picks one ratio per unit minimising the summed damage with the summed savings at least the
   target's.
4. The plan's real value is measured (:mod:`.meter`, the kind's ``measure``: counted on the pruned
   model, or its exported ONNX file, or timed); if it misses, the savings asked of the knapsack
   are raised by the shortfall and it is solved again (savings of coupled groups are not
   additive; latency is noisy). Too large an overshoot is bisected back.
5. Sparsity targets with unstructured methods (:mod:`.core`): the plan is compared on the
   evaluation data with the two simple baselines that meet the target too (the same ratio in
   every layer; one global magnitude threshold, PyTorch's ``global_unstructured``) and the most
   accurate is kept (``Allocation.chosen``). The knapsack wins where the curves predict well; a
   baseline can win where every option collapses and their sum predicts nothing.
6. The plan is verified with :meth:`Subject.evaluate`: predicted accuracy (dense minus the summed
   drops) is reported next to the verified one and flagged when they differ by more than 2 points.
"""

from explorer.allocate.core import (
    FLAG_POINTS,
    Allocation,
    CurveNeeds,
    Target,
    allocate,
    curve_needs,
    default_method,
    pareto_frame,
    pareto_front,
)
from explorer.allocate.problem import STRUCTURED_RATIOS, UNSTRUCTURED_RATIOS, curve_ratios
from explorer.allocate.targets import TargetKind, get_target, target_kinds

__all__ = [
    "FLAG_POINTS",
    "STRUCTURED_RATIOS",
    "UNSTRUCTURED_RATIOS",
    "Allocation",
    "CurveNeeds",
    "Target",
    "TargetKind",
    "allocate",
    "curve_needs",
    "curve_ratios",
    "default_method",
    "get_target",
    "pareto_frame",
    "pareto_front",
    "target_kinds",
]
