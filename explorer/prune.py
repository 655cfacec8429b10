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
from dataclasses import replace

import torch
import torch_pruning as tp
from torch import nn

from explorer.blocks import check_blocks, find_blocks, remove_blocks
from explorer.data import Split
from explorer.errors import PlanError, PruneError
from explorer.groups import GroupShape, expand, unit_importance
from explorer.heads import (
    FusedInProj,
    remove_fused_heads,
    remove_mha_heads,
    update_group_heads,
    why_heads_fixed,
)
from explorer.inputs import Inputs, run_model
from explorer.inspect import PRUNABLE_TYPES, Inventory, build_dependency_graph, classified_groups
from explorer.methods import (
    ChannelMethod,
    LayerContext,
    WeightMethod,
    get_method,
    unstructured_mask,
)
from explorer.plan import PruningPlan

__all__ = [
    "apply_plan",
    "fresh_copy",
    "group_scores",
    "kept_channels",
    "prune_mha_heads",
    "pruned_weight",
    "ratio_for_width",
    "removal",
    "remove_channels",
    "verified",
]

Compensation = Callable[[tp.Group], Callable[[], None] | None]


# --- applying a plan -----------------------------------------------------------------------------


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the (unpruned, hook-free) base model, in eval mode."""
    return copy.deepcopy(model).eval()


def kept_channels(n_channels: int, ratio: float, round_to: int | None = None) -> int:
    """Channels a local structured plan keeps in a group of ``n_channels`` at ``ratio`` (at least
    one). ``round_to`` rounds the kept count up to a multiple of it (Torch-Pruning's rule), never
    above ``n_channels``: the result is a multiple of ``round_to`` or the whole group."""
    kept = n_channels - min(int(ratio * n_channels), n_channels - 1)
    if round_to and round_to > 1:
        kept = min(n_channels, math.ceil(kept / round_to) * round_to)
    return kept


def ratio_for_width(n_channels: int, width: int) -> float:
    """A ratio at which a group of ``n_channels`` keeps exactly ``width`` channels
    (``kept_channels(n_channels, ratio) == width``), with as few decimals as that allows."""
    if not 1 <= width <= n_channels:
        raise ValueError(f"a group of {n_channels} channels cannot keep {width}")
    exact = (
        n_channels - width + 0.5
    ) / n_channels  # int(exact * n) == n - width, away from float edges
    for digits in (2, 3, 4, 6):
        ratio = round((n_channels - width) / n_channels, digits)
        if ratio < 1 and kept_channels(n_channels, ratio) == width:
            return ratio
    return exact


def removal(
    shape: GroupShape, importance: torch.Tensor, ratio: float, round_to: int | None = None
) -> list[int]:
    """Channels a local structured plan removes from a group of ``shape`` at ``ratio``, given the
    per-channel ``importance`` (a method's scores): the least important units (heads, or positions
    of every block of a grouped convolution), at least one kept. ``round_to`` rounds the kept count
    up to a multiple of it where a unit is one channel."""
    units = unit_importance(shape, importance)
    plain = shape.unit == 1 and shape.repeats == 1
    n_prune = len(units) - kept_channels(len(units), ratio, round_to if plain else None)
    if n_prune <= 0:
        return []
    return expand(shape, sorted(units.argsort()[:n_prune].tolist()))


def group_scores(
    method: ChannelMethod,
    scorer: Callable[[tp.Group], torch.Tensor],
    dg: tp.DependencyGraph,
    group: tp.Group,
    shape: GroupShape,
    members: list[str],
) -> torch.Tensor:
    """Per-channel scores of ``group`` under ``method`` (``scorer`` is its Torch-Pruning
    importance);
    a group holding a fused query/key/value layer is scored by ``method.fused_scores`` instead.

    Raises:
        PlanError: the method cannot score that group.
    """
    if shape.heads and shape.repeats > 1:
        found = method.fused_scores(dg, group, shape)
        if found is None:
            raise PlanError(
                f"{method.name} cannot score the heads of the fused query/key/value layer in"
                f" {members} (Torch-Pruning misplaces its blocks); use l1-structured or"
                " l2-structured"
            )
        return found
    return scorer(group)


def _head_scores(model: nn.Module, name: str, method: ChannelMethod) -> torch.Tensor:
    mha = model.get_submodule(name).owner
    found = method.head_scores(mha)
    if found is None:
        raise PlanError(
            f"layer {name!r}: {method.name} cannot score the heads of nn.MultiheadAttention's fused"
            " projection; use l1-structured or l2-structured"
        )
    return found


def prune_mha_heads(model: nn.Module, name: str, ratio: float, method: ChannelMethod) -> None:
    """Remove the least important heads (``method.head_scores``) of the ``nn.MultiheadAttention``
    whose fused projection is layer ``name``, at ``ratio`` of its heads (at least one kept), in
    place.
    """
    mha = model.get_submodule(name).owner
    imp = _head_scores(model, name, method)
    n_prune = mha.num_heads - kept_channels(mha.num_heads, ratio)
    remove_mha_heads(mha, sorted(imp.argsort()[:n_prune].tolist()))


def _structured(
    model: nn.Module,
    example_input: torch.Tensor | Inputs,
    ratios: dict[str, tuple[float, ChannelMethod]],
    global_ratio: float | None,
    round_to: int | None = None,
    calibration: Split | None = None,
) -> None:
    """Remove output channels in place. ``ratios``: layer -> (ratio, its method). A group is scored
    by the method of its first listed member."""
    model.requires_grad_(True)
    try:
        dg = build_dependency_graph(model, example_input)
    except Exception as e:
        raise PruneError(
            f"structured pruning needs a traceable model; DepGraph failed: {type(e).__name__}: {e}"
        ) from None
    modules = dict(model.named_modules())
    fused = {n: ratios[n] for n in ratios if isinstance(modules.get(n), FusedInProj)}
    plans = []  # (group, members, shape, ratio, method)
    classified = classified_groups(dg, model)
    refused = {
        m: shape.refused for _, members, shape in classified if shape.refused for m in members
    }
    grouped = {m for _, members, shape in classified if not shape.refused for m in members} - set(
        refused
    )
    for name in ratios:
        if name in fused:
            if why_heads_fixed(modules[name].owner):
                raise PlanError(f"layer {name!r}: {why_heads_fixed(modules[name].owner)}")
        elif name in refused:
            raise PlanError(
                f"layer {name!r} cannot lose output channels (structured pruning off for its group:"
                f" {refused[name]}); use an unstructured method for it"
            )
        elif name not in grouped:
            raise PlanError(
                f"layer {name!r} cannot lose output channels (it feeds the model output or an "
                "unsupported layer); use an unstructured method for it"
            )
    for group, members, shape in classified:
        if shape.refused or set(members) & set(refused):
            continue
        listed = [m for m in members if m in ratios]
        if not listed:
            continue
        ratio = max(ratios[m][0] for m in listed)  # a group moves together: its largest ratio wins
        plans.append((group, members, shape, ratio, ratios[listed[0]][1]))
    methods = {m.name: m for *_, m in plans}
    scorers = {
        name: m.scorer(model, calibration, global_ranking=global_ratio is not None)
        for name, m in methods.items()
    }
    compensations = {name: m.compensation(model, calibration) for name, m in methods.items()}

    def scores(
        group: tp.Group, members: list[str], shape: GroupShape, method: ChannelMethod
    ) -> torch.Tensor:
        return group_scores(method, scorers[method.name], dg, group, shape, members)

    if global_ratio is not None:
        # Rank units across groups by their scores normalised per group (Torch-Pruning's global
        # pruning; the methods' scorers normalise theirs), keeping at least one unit in every group.
        # A unit (a head, a position in every block) counts for the channels it holds.
        scored = []
        for group, members, shape, _, method in plans:
            imp = unit_importance(shape, scores(group, members, shape, method))
            if shape.heads and shape.repeats > 1:  # fused_scores: not normalised by the scorer
                imp = imp / imp.mean().clamp_min(1e-12)  # Torch-Pruning's "mean" normalizer
            scored.append(imp)
        fused_scored = {n: _head_scores(model, n, method) for n, (_, method) in fused.items()}
        fused_scored = {n: v / v.mean().clamp_min(1e-12) for n, v in fused_scored.items()}
        weights = [
            torch.full_like(imp, float(shape.repeats * shape.unit))
            for imp, (_, _, shape, _, _) in zip(scored, plans, strict=False)
        ]
        weights += [
            torch.full_like(v, float(modules[n].owner.head_dim * 3))
            for n, v in fused_scored.items()
        ]
        every = scored + list(fused_scored.values())
        threshold = -float("inf")
        if every:
            flat, w = torch.cat(every), torch.cat(weights)
            order = flat.argsort()
            taken = torch.cumsum(w[order], 0) <= global_ratio * float(w.sum())
            if bool(taken.any()):
                threshold = float(flat[order][taken].max())
        removals = []
        for (group, members, shape, _, method), imp in zip(plans, scored, strict=False):
            units = (imp <= threshold).nonzero().flatten().tolist()[: len(imp) - 1]
            removals.append((group, members, shape, expand(shape, units), method))
        for name, imp in fused_scored.items():
            remove_mha_heads(
                modules[name].owner, (imp <= threshold).nonzero().flatten().tolist()[: len(imp) - 1]
            )
    else:
        # Rank every group on the unpruned model first: removing one group's channels shifts the
        # indices that other groups hold into a shared consumer (a concatenation), so a group
        # scored after another was pruned would index stale channels.
        removals = [
            (
                group,
                members,
                shape,
                removal(shape, scores(group, members, shape, method), ratio, round_to),
                method,
            )
            for group, members, shape, ratio, method in plans
        ]
        for name, (ratio, method) in fused.items():
            prune_mha_heads(model, name, ratio, method)
    for group, members, shape, idxs, method in removals:
        remove_channels(dg, model, group, members, shape, idxs, compensations[method.name])
    model.requires_grad_(False)


def remove_channels(
    dg: tp.DependencyGraph,
    model: nn.Module,
    group: tp.Group,
    members: list[str],
    shape: GroupShape,
    idxs: list[int],
    compensate: Compensation | None = None,
) -> None:
    """Remove channels ``idxs`` (from ``removal``) of ``group`` in ``model`` (DepGraph's), with
    the method's compensation around it and what goes with them: a fused query/key/value layer
    done layer by layer, the attention module's head counts and per-head tables updated.

    Raises:
        PlanError: raised by the compensation.
        PruneError: naming the group.
    """
    if not idxs:
        return
    if shape.heads and shape.repeats > 1:
        if compensate is not None:
            raise PruneError(
                f"removing heads of {members}: a fused query/key/value layer is pruned layer by "
                "layer, without the method's compensation"
            )
        remove_fused_heads(dg, group, members, shape, idxs)
    else:
        _remove(dg, group, members, idxs, compensate)
    if shape.heads:
        update_group_heads(model, members, shape, idxs)


def _foreign_param(item: object, channels: int) -> bool:
    """A bare parameter DepGraph couples with the group, along a dimension that is not as long as
    the group's channels: a per-head table (a relative position bias, met through the attention
    scores), not a copy of the channels. It is left to the head update."""
    dep = item.dep  # type: ignore[attr-defined]
    if dep.target.type != tp.ops.OPTYPE.PARAMETER or not item.idxs:  # type: ignore[attr-defined]
        return False
    shape = tuple(dep.target.module.shape)
    # The dimension Torch-Pruning prunes is its node's: a dependency sets it on the one pruner all
    # bare parameters share when it runs. (That pruner's own ``pruning_dim`` is the last one run,
    # by whatever model was pruned before: reading it made this depend on the order of models.)
    dim = getattr(dep.target, "pruning_dim", -1)
    if not -len(shape) <= dim < len(shape):
        return channels not in shape
    return shape[dim] != channels


def _remove(
    dg: tp.DependencyGraph,
    group: tp.Group,
    members: list[str],
    idxs: list[int],
    compensate: Compensation | None = None,
) -> None:
    """Channels ``idxs`` out of ``group``'s concrete pruning group, touching only what holds them
    (per-head tables are left to the head update)."""
    root = group[0].dep
    try:
        concrete = dg.get_pruning_group(root.target.module, root.handler, sorted(idxs))
        concrete._group = [
            item for item in concrete._group if not _foreign_param(item, len(group[0].idxs))
        ]
        after = compensate(concrete) if compensate is not None else None
        concrete.prune()
        if after is not None:
            after()
    except PlanError:
        raise
    except Exception as e:
        raise PruneError(
            f"removing channels of group {members} failed: {type(e).__name__}: {e}"
        ) from None


def _trial(
    model: nn.Module, example_input: torch.Tensor | Inputs, inventory: Inventory, gids: list[str]
) -> str:
    """Remove one unit (a channel, a head) from each of the groups ``gids`` of a fresh copy and run
    it; the error it raises (empty when the model still returns its logits)."""
    method = get_method("l1-structured")
    assert isinstance(method, ChannelMethod)
    ratios = {}
    for gid in gids:
        info = inventory[gid]
        units = info.heads or info.out_channels
        ratios[gid] = (min(1.5 / max(units, 2), 0.99), method)  # one unit of the group
    pruned = fresh_copy(model)
    try:
        _structured(pruned, example_input, ratios, None)
        with torch.no_grad():
            out = run_model(pruned, example_input)
    except Exception as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"{type(e).__name__}: {text}".removeprefix("PruneError: ")
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        return f"the pruned model returns {type(out).__name__} instead of (N, classes) logits"
    return ""


def verified(
    model: nn.Module, example_input: torch.Tensor | Inputs, inventory: Inventory
) -> Inventory:
    """``inventory`` with every group that cannot lose a unit refused, with the error.

    One copy loses a unit in every group at once and runs; only where that fails are the groups
    bisected (a few more copies), so a structure DepGraph groups but cannot remove (a reshape to
    constant channel counts in an exported graph, a pattern its index mapping misreads) is named
    and refused while every other group stays prunable.
    """
    if inventory.structured_error or not inventory.groups:
        return inventory
    refused: dict[str, str] = {}

    def search(gids: list[str]) -> bool:
        error = _trial(model, example_input, inventory, gids)
        if not error:
            return True
        if len(gids) == 1:
            refused[gids[0]] = error
            return False
        half = len(gids) // 2
        left, right = search(gids[:half]), search(gids[half:])
        if left and right:  # each half alone is fine, together they break: name them all
            refused.update(
                {
                    g: (
                        "removing its channels together with other groups' breaks the model"
                        f" ({error})"
                    )
                    for g in gids
                }
            )
        return False

    search(list(inventory.groups))
    if not refused:
        return inventory
    layers = []
    for layer in inventory.layers:
        if layer.group in refused:
            why = (
                "structured pruning off for its group: removing its channels breaks the model"
                f" ({refused[layer.group]})"
            )
            layer = replace(layer, group=None, heads=0, note=why)
        layers.append(layer)
    groups = {g: m for g, m in inventory.groups.items() if g not in refused}
    return replace(inventory, layers=tuple(layers), groups=groups)


def pruned_weight(
    method: str | WeightMethod,
    model: nn.Module,
    layer: str,
    ratio: float,
    *,
    seed: int = 0,
    calibration: Split | None = None,
) -> torch.Tensor:
    """The weight that ``{layer: ratio}`` under ``method`` leaves in ``model`` (a new tensor;
    ``model`` is not modified): the same masks (and updated weights) as :func:`apply_plan`."""
    m = get_method(method)
    if not isinstance(m, WeightMethod):
        raise PlanError(f"{m.name} removes channels; it has no weight mask")
    with torch.no_grad():
        return m.prune_weight(LayerContext(model, layer, seed, calibration), ratio)


@torch.no_grad()
def _unstructured(
    model: nn.Module,
    plan: PruningPlan,
    names: list[str],
    seed: int = 0,
    calibration: Split | None = None,
) -> None:
    modules = dict(model.named_modules())
    if plan.scope == "global":
        method = get_method(plan.method)
        assert isinstance(method, WeightMethod) and plan.ratio is not None
        contexts = [LayerContext(model, n, seed, calibration) for n in names]
        if method.kind == "semi-structured":  # the pattern is per layer: nothing to rank globally
            new = [method.prune_weight(ctx, plan.ratio) for ctx in contexts]
            for ctx, w in zip(contexts, new, strict=False):
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
        for name, s in zip(names, scores, strict=False):
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


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    example_input: torch.Tensor | Inputs,
    inventory: Inventory | None = None,
    *,
    seed: int = 0,
    round_to: int | None = None,
    calibration: Split | None = None,
) -> nn.Module:
    """Return a pruned copy of ``model``; ``model`` itself is not modified.

    The plan's whole blocks are removed first (each becomes the identity), then structured layers
    are pruned (shapes change), then unstructured masks are computed on what remains. ``seed``
    varies the masks of random methods (the same seed, the same masks).
    ``round_to`` (local structured plans) rounds the channels each group keeps up to a multiple of
    it, so dense kernels see aligned channel counts; the plan's own ``round_to`` when None.
    ``calibration``: the data that data-aware methods score with.

    Raises:
        PlanError: a layer or block the model does not have, a ratio for a layer of a removed
            block, or a structured method on a layer whose channels cannot be removed.
        PruneError: the model cannot be pruned as asked (e.g. DepGraph cannot trace it).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    plan.check_layers(names)
    round_to = plan.round_to if round_to is None else round_to
    pruned = fresh_copy(model)
    if plan.blocks:  # whole blocks first: the channels of what remains are then ranked
        ratios = {n: rule.ratio for n, rule in plan.layers.items()}
        check_blocks(plan.blocks, find_blocks(model, example_input), ratios, model)
        remove_blocks(pruned, plan.blocks)
    structured: dict[str, tuple[float, ChannelMethod]] = {}
    unstructured: list[str] = []
    for name in plan.layers:
        method = get_method(plan.method_of(name))
        if inventory is not None and (why := method.applies_to(name, inventory)):
            if method.structured:
                raise PlanError(
                    f"layer {name!r} cannot lose output channels ({why}); use an unstructured"
                    " method"
                )
            raise PlanError(f"layer {name!r}: {method.name} cannot prune it ({why})")
        if isinstance(method, ChannelMethod):
            structured[name] = (plan.layers[name].ratio, method)
        else:
            unstructured.append(name)
    if structured:
        is_global = plan.scope == "global"
        try:
            _structured(
                pruned,
                example_input,
                structured,
                plan.ratio if is_global else None,
                round_to,
                calibration,
            )
            with (
                torch.no_grad()
            ):  # DepGraph can mis-group exotic graphs (e.g. decomposed attention)
                run_model(pruned, example_input)
        except (PlanError, PruneError):
            raise
        except Exception as e:
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise PruneError(
                f"removing channels of {sorted(structured)} broke the model "
                f"({type(e).__name__}: {detail}); use an unstructured method there"
            ) from None
    if unstructured:
        _unstructured(pruned, plan, unstructured, seed, calibration)
    pruned.requires_grad_(False)
    return pruned.eval()
