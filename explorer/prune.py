"""Apply a plan to a fresh copy of a model; the methods (``explorer.methods``) say what goes.

Unstructured and N:M methods zero weights (masks computed as ``torch.nn.utils.prune`` does, then
baked in: no hooks, no ``weight_orig``). Structured methods remove output channels for real with
Torch-Pruning's DepGraph, and every coupled layer shrinks with them. The base model is never
modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from explorer.data import Split
from explorer.errors import PlanError, PruneError
from explorer.inspect import PRUNABLE_TYPES, Inventory, build_dependency_graph, structured_groups
from explorer.methods import ChannelMethod, LayerContext, WeightMethod, get_method, unstructured_mask
from explorer.plan import PruningPlan

__all__ = ["apply_plan", "fresh_copy", "kept_channels", "pruned_weight", "remove_channels"]


# --- applying a plan -----------------------------------------------------------------------------


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the (unpruned, hook-free) base model, in eval mode."""
    return copy.deepcopy(model).eval()


def kept_channels(n_channels: int, ratio: float, round_to: int | None = None) -> int:
    """Channels a local structured plan keeps in a group of ``n_channels`` at ``ratio`` (at least
    one). ``round_to`` rounds the kept count up to a multiple of it (Torch-Pruning's rule)."""
    kept = n_channels - min(int(ratio * n_channels), n_channels - 1)
    if round_to and round_to > 1:
        kept = min(n_channels, math.ceil(kept / round_to) * round_to)
    return kept


def _structured(model: nn.Module, example_input: torch.Tensor, ratios: dict[str, tuple[float, ChannelMethod]],
                global_ratio: float | None, round_to: int | None = None, calibration: Split | None = None) -> None:
    """Remove output channels in place. ``ratios``: layer -> (ratio, its method). A group is scored
    by the method of its first listed member."""
    model.requires_grad_(True)
    try:
        dg = build_dependency_graph(model, example_input)
    except Exception as e:
        raise PruneError(f"structured pruning needs a traceable model; DepGraph failed: {type(e).__name__}: {e}") from None
    plans = []  # (group, members, ratio, method)
    groups = structured_groups(dg, model)
    grouped = {m for _, members in groups for m in members}
    for name in ratios:
        if name not in grouped:
            raise PlanError(f"layer {name!r} cannot lose output channels (it feeds the model output or an "
                            "unsupported layer); use an unstructured method for it")
    for group, members in groups:
        listed = [m for m in members if m in ratios]
        if not listed:
            continue
        ratio = max(ratios[m][0] for m in listed)  # a group moves together: its largest ratio wins
        plans.append((group, members, ratio, ratios[listed[0]][1]))
    methods = {m.name: m for *_, m in plans}
    scorers = {name: m.scorer(model, calibration, global_ranking=global_ratio is not None)
               for name, m in methods.items()}
    compensations = {name: m.compensation(model, calibration) for name, m in methods.items()}
    if global_ratio is not None:
        # Rank channels across groups by their importance normalised per group (Torch-Pruning's
        # global pruning), keeping at least one channel in every group.
        scored = [scorers[method.name](group) for group, _, _, method in plans]
        if scored:
            flat = torch.cat(scored)
            k = int(global_ratio * flat.numel())
            threshold = flat.sort().values[k - 1] if k else -float("inf")
        for (group, members, _, method), imp in zip(plans, scored):
            idxs = (imp <= threshold).nonzero().flatten().tolist()
            idxs = idxs[: len(imp) - 1]
            _remove(dg, group, members, idxs, compensations[method.name])
    else:
        # Rank every group on the unpruned model first: removing one group's channels shifts the
        # indices that other groups hold into a shared consumer (a concatenation), so a group
        # scored after another was pruned would index stale channels.
        removals = []
        for group, members, ratio, method in plans:
            n_channels = len(group[0].idxs)
            n_prune = n_channels - kept_channels(n_channels, ratio, round_to)
            if n_prune <= 0:
                continue
            imp = scorers[method.name](group)
            removals.append((group, members, imp.argsort()[:n_prune].tolist(), compensations[method.name]))
        for group, members, idxs, compensate in removals:
            _remove(dg, group, members, idxs, compensate)
    model.requires_grad_(False)


def remove_channels(dg: tp.DependencyGraph, group: tp.Group, idxs: list[int],
                    compensate: Callable[[tp.Group], Callable[[], None]] | None = None) -> None:
    """Remove channels ``idxs`` of ``group`` (and every coupled layer's), with the method's
    compensation around it. Raises what Torch-Pruning raises."""
    root = group[0].dep
    concrete = dg.get_pruning_group(root.target.module, root.handler, sorted(idxs))
    after = compensate(concrete) if compensate is not None else None
    concrete.prune()
    if after is not None:
        after()


def _remove(dg: tp.DependencyGraph, group: tp.Group, members: list[str], idxs: list[int],
            compensate: Callable[[tp.Group], Callable[[], None]] | None = None) -> None:
    if not idxs:
        return
    try:
        remove_channels(dg, group, idxs, compensate)
    except PlanError:
        raise
    except Exception as e:
        raise PruneError(f"removing channels of group {members} failed: {type(e).__name__}: {e}") from None


def pruned_weight(method: str | WeightMethod, model: nn.Module, layer: str, ratio: float, *, seed: int = 0,
                  calibration: Split | None = None) -> torch.Tensor:
    """The weight that ``{layer: ratio}`` under ``method`` leaves in ``model`` (a new tensor;
    ``model`` is not modified): the same masks (and updated weights) as :func:`apply_plan`."""
    m = get_method(method)
    if not isinstance(m, WeightMethod):
        raise PlanError(f"{m.name} removes channels; it has no weight mask")
    with torch.no_grad():
        return m.prune_weight(LayerContext(model, layer, seed, calibration), ratio)


@torch.no_grad()
def _unstructured(model: nn.Module, plan: PruningPlan, names: list[str], seed: int = 0,
                  calibration: Split | None = None) -> None:
    modules = dict(model.named_modules())
    if plan.scope == "global":
        method = get_method(plan.method)
        assert isinstance(method, WeightMethod) and plan.ratio is not None
        contexts = [LayerContext(model, n, seed, calibration) for n in names]
        if method.kind == "semi-structured":  # the pattern is per layer: nothing to rank globally
            new = [method.prune_weight(ctx, plan.ratio) for ctx in contexts]
            for ctx, w in zip(contexts, new):
                ctx.module.weight.copy_(w)
            return
        if not method.supports_global:
            raise PlanError(f"{method.name} prunes layer by layer; use scope 'local'")
        scores = [method.scores(ctx) for ctx in contexts]
        if not scores:
            return
        flat = torch.cat([s.reshape(-1) for s in scores])
        keep = unstructured_mask(flat, plan.ratio)
        start = 0
        for name, s in zip(names, scores):
            w = modules[name].weight
            w.mul_(keep[start : start + s.numel()].reshape(w.shape))
            start += s.numel()
        return
    # Every layer's new weight is computed on the model as it is before any of them changes, so
    # data-aware methods see the inputs of the unpruned layers (as their papers score them).
    new = {}
    for name in names:
        ratio = plan.layers[name].ratio
        if ratio:
            method = get_method(plan.method_of(name))
            assert isinstance(method, WeightMethod)
            new[name] = method.prune_weight(LayerContext(model, name, seed, calibration), ratio)
    for name, w in new.items():
        modules[name].weight.copy_(w)


def apply_plan(model: nn.Module, plan: PruningPlan, example_input: torch.Tensor,
               inventory: Inventory | None = None, *, seed: int = 0, round_to: int | None = None,
               calibration: Split | None = None) -> nn.Module:
    """Return a pruned copy of ``model``; ``model`` itself is not modified.

    Structured layers are pruned first (shapes change), then unstructured masks are computed on
    what remains. ``seed`` varies the masks of random methods (the same seed, the same masks).
    ``round_to`` (local structured plans; not part of the plan format) rounds the channels each
    group keeps up to a multiple of it, so dense kernels see aligned channel counts.
    ``calibration``: the data that data-aware methods score with.

    Raises:
        PlanError: a layer the model does not have, or a structured method on a layer whose
            channels cannot be removed.
        PruneError: the model cannot be pruned as asked (e.g. DepGraph cannot trace it).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    plan.check_layers(names)
    pruned = fresh_copy(model)
    structured: dict[str, tuple[float, ChannelMethod]] = {}
    unstructured: list[str] = []
    for name in plan.layers:
        method = get_method(plan.method_of(name))
        if inventory is not None and (why := method.applies_to(name, inventory)):
            if method.structured:
                raise PlanError(f"layer {name!r} cannot lose output channels ({why}); use an unstructured method")
            raise PlanError(f"layer {name!r}: {method.name} cannot prune it ({why})")
        if isinstance(method, ChannelMethod):
            structured[name] = (plan.layers[name].ratio, method)
        else:
            unstructured.append(name)
    if structured:
        is_global = plan.scope == "global"
        try:
            _structured(pruned, example_input, structured, plan.ratio if is_global else None, round_to, calibration)
            with torch.no_grad():  # DepGraph can mis-group exotic graphs (e.g. decomposed attention)
                pruned(example_input)
        except (PlanError, PruneError):
            raise
        except Exception as e:
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise PruneError(f"removing channels of {sorted(structured)} broke the model "
                             f"({type(e).__name__}: {detail}); use an unstructured method there") from None
    if unstructured:
        _unstructured(pruned, plan, unstructured, seed, calibration)
    pruned.requires_grad_(False)
    return pruned.eval()
