"""Pruning methods (one registry) and applying a plan to a fresh copy of a model.

Unstructured and N:M methods zero weights (masks computed as ``torch.nn.utils.prune`` does, then
baked in: no hooks, no ``weight_orig``). Structured methods remove output channels for real with
Torch-Pruning's DepGraph, and every coupled layer shrinks with them. The base model is never
modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from explorer.errors import PlanError, PruneError, UnknownMethodError
from explorer.groups import GroupShape, expand, unit_importance
from explorer.heads import (
    FusedInProj,
    mha_head_importance,
    remove_mha_heads,
    update_head_counts,
    why_heads_fixed,
)
from explorer.inputs import Inputs, run_model
from explorer.inspect import PRUNABLE_TYPES, Inventory, build_dependency_graph, classified_groups
from explorer.plan import PruningPlan

__all__ = [
    "PruneMethod",
    "apply_plan",
    "available_methods",
    "get_method",
    "group_importance",
    "kept_channels",
    "nm_mask",
    "prune_mha_heads",
    "removal",
    "remove_channels",
    "unstructured_mask",
    "verified",
]

Kind = Literal["unstructured", "semi-structured", "structured"]
# Scores for unstructured ranking: higher = more important. The generator makes random methods
# reproducible (seeded per layer).
ScoreFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class PruneMethod:
    name: str
    kind: Kind
    summary: str
    score: ScoreFn | None = None  # unstructured: per-weight importance
    norm_p: int | None = None  # structured: p of the channel norm

    @property
    def structured(self) -> bool:
        return self.kind == "structured"

    @property
    def speeds_up_dense_cpu(self) -> bool:
        """Only removed channels make dense CPU kernels (ONNX Runtime's included) faster."""
        return self.structured

    @property
    def runtime_note(self) -> str:
        if self.structured:
            return "Channels are removed: the ONNX model really shrinks and dense CPU kernels run faster."
        return (
            "Zeros only: ONNX Runtime's dense CPU kernels do the same work, so latency does not drop; "
            "the compressed (gzip) file shrinks."
        )


_METHODS: dict[str, PruneMethod] = {}


def _register(method: PruneMethod) -> None:
    _METHODS[method.name] = method


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> PruneMethod:
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise UnknownMethodError(f"unknown pruning method {name!r}; choose from {available_methods()}") from None


_register(PruneMethod("l1-unstructured", "unstructured",
                      "zero the weights of smallest magnitude", score=lambda w, g: w.abs()))
_register(PruneMethod("random-unstructured", "unstructured",
                      "zero weights chosen at random (seeded): the baseline magnitude should beat",
                      score=lambda w, g: torch.rand(w.shape, generator=g)))
_register(PruneMethod("2:4", "semi-structured",
                      "in every block of 4 consecutive input weights, zero the 2 smallest (50% sparsity; "
                      "any ratio > 0 applies the pattern)"))
_register(PruneMethod("l1-structured", "structured",
                      "remove the output channels of smallest L1 norm (coupled layers with them)", norm_p=1))
_register(PruneMethod("l2-structured", "structured",
                      "remove the output channels of smallest L2 norm (coupled layers with them)", norm_p=2))


# --- masks ---------------------------------------------------------------------------------------


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask zeroing ``round(ratio * n)`` lowest scores, exactly as ``prune.L1Unstructured``."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    k = round(ratio * scores.numel())
    if k:
        idx = torch.topk(scores.reshape(-1), k=k, largest=False).indices
        mask.view(-1)[idx] = False
    return mask


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep-mask zeroing the ``n`` smallest of every ``m`` consecutive input weights.

    Input weights are the flattened (in, kh, kw) of a conv or the inputs of a linear. A trailing
    block shorter than ``m`` loses ``len * n // m`` weights.
    """
    rows = weight.detach().abs().reshape(weight.shape[0], -1)
    mask = torch.ones_like(rows, dtype=torch.bool)
    full = rows.shape[1] // m * m
    if full:
        blocks = rows[:, :full].reshape(rows.shape[0], -1, m)
        drop = blocks.topk(n, dim=-1, largest=False).indices
        mask[:, :full].reshape(rows.shape[0], -1, m).scatter_(-1, drop, False)
    tail = rows.shape[1] - full
    if tail and tail * n // m:
        drop = rows[:, full:].topk(tail * n // m, dim=-1, largest=False).indices
        mask[:, full:].scatter_(-1, drop, False)
    return mask.reshape(weight.shape)


def _generator(layer: str, seed: int = 0) -> torch.Generator:
    # A per-layer seed (stable across processes, unlike hash()) keeps random pruning reproducible.
    return torch.Generator().manual_seed((sum(ord(c) * 31**i for i, c in enumerate(layer)) + 7919 * seed) % 2**31)


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


def removal(shape: GroupShape, importance: torch.Tensor, ratio: float, round_to: int | None = None) -> list[int]:
    """Channels a local structured plan removes from a group of ``shape`` at ``ratio``, given the
    per-channel ``importance`` (Torch-Pruning's group magnitude): the least important units (heads,
    or positions of every block of a grouped convolution), at least one kept. ``round_to`` rounds
    the kept count up to a multiple of it where a unit is one channel."""
    units = unit_importance(shape, importance)
    plain = shape.unit == 1 and shape.repeats == 1
    n_prune = len(units) - kept_channels(len(units), ratio, round_to if plain else None)
    if n_prune <= 0:
        return []
    return expand(shape, sorted(units.argsort()[:n_prune].tolist()))


def _structured(model: nn.Module, example_input: torch.Tensor | Inputs, ratios: dict[str, tuple[float, int]],
                global_ratio: float | None, round_to: int | None = None) -> None:
    """Remove output channels in place. ``ratios``: layer -> (ratio, p of the norm)."""
    model.requires_grad_(True)
    try:
        dg = build_dependency_graph(model, example_input)
    except Exception as e:
        raise PruneError(f"structured pruning needs a traceable model; DepGraph failed: {type(e).__name__}: {e}") from None
    modules = dict(model.named_modules())
    fused = {n: ratios[n] for n in ratios if isinstance(modules.get(n), FusedInProj)}
    plans = []  # (group, members, shape, ratio, p)
    classified = classified_groups(dg, model)
    refused = {m: shape.refused for _, members, shape in classified if shape.refused for m in members}
    grouped = {m for _, members, shape in classified if not shape.refused for m in members} - set(refused)
    for name in ratios:
        if name in fused:
            if why_heads_fixed(modules[name].owner):
                raise PlanError(f"layer {name!r}: {why_heads_fixed(modules[name].owner)}")
        elif name in refused:
            raise PlanError(f"layer {name!r} cannot lose output channels (structured pruning off for its group: "
                            f"{refused[name]}); use an unstructured method for it")
        elif name not in grouped:
            raise PlanError(f"layer {name!r} cannot lose output channels (it feeds the model output or an "
                            "unsupported layer); use an unstructured method for it")
    for group, members, shape, in ((g, m, s) for g, m, s in classified if not s.refused and not set(m) & set(refused)):
        listed = [m for m in members if m in ratios]
        if not listed:
            continue
        ratio = max(ratios[m][0] for m in listed)  # a group moves together: its largest ratio wins
        plans.append((group, members, shape, ratio, ratios[listed[0]][1]))
    if global_ratio is not None:
        # Rank units across groups by their group norm normalised per group (Torch-Pruning's
        # global pruning), keeping at least one unit in every group. A unit (a head, a position
        # in every block) counts for the channels it holds.
        scored = []
        for group, _, shape, _, p in plans:
            imp = unit_importance(shape, group_importance(dg, group, shape, p))
            scored.append(imp / imp.mean().clamp_min(1e-12))  # Torch-Pruning's "mean" normalizer
        fused_scored = {n: mha_head_importance(modules[n].owner, p) for n, (_, p) in fused.items()}
        fused_scored = {n: v / v.mean().clamp_min(1e-12) for n, v in fused_scored.items()}
        weights = [torch.full_like(imp, float(shape.repeats * shape.unit)) for imp, (_, _, shape, _, _) in zip(scored, plans)]
        weights += [torch.full_like(v, float(modules[n].owner.head_dim * 3)) for n, v in fused_scored.items()]
        every = scored + list(fused_scored.values())
        threshold = -float("inf")
        if every:
            flat, w = torch.cat(every), torch.cat(weights)
            order = flat.argsort()
            budget = global_ratio * float(w.sum())
            taken = torch.cumsum(w[order], 0) <= budget
            if bool(taken.any()):
                threshold = float(flat[order][taken].max())
        removals = []
        for (group, members, shape, _, _), imp in zip(plans, scored):
            units = (imp <= threshold).nonzero().flatten().tolist()[: len(imp) - 1]
            removals.append((group, members, expand(shape, units)))
        for name, imp in fused_scored.items():
            remove_mha_heads(modules[name].owner, (imp <= threshold).nonzero().flatten().tolist()[: len(imp) - 1])
    else:
        # Rank every group on the unpruned model first: removing one group's channels shifts the
        # indices that other groups hold into a shared consumer (a concatenation), so a group
        # scored after another was pruned would index stale channels.
        removals = []
        for group, members, shape, ratio, p in plans:
            imp = group_importance(dg, group, shape, p)
            removals.append((group, members, removal(shape, imp, ratio, round_to)))
        for name, (ratio, p) in fused.items():
            prune_mha_heads(model, name, ratio, p)
    shapes = {id(group): shape for group, _, shape, _, _ in plans}
    for group, members, idxs in removals:
        remove_channels(dg, model, group, members, shapes[id(group)], idxs)
    model.requires_grad_(False)


def prune_mha_heads(model: nn.Module, name: str, ratio: float, p: int) -> None:
    """Remove the least important heads (p-norm) of the ``nn.MultiheadAttention`` whose fused
    projection is layer ``name``, at ``ratio`` of its heads (at least one kept), in place."""
    mha = model.get_submodule(name).owner
    imp = mha_head_importance(mha, p)
    n_prune = mha.num_heads - kept_channels(mha.num_heads, ratio)
    remove_mha_heads(mha, sorted(imp.argsort()[:n_prune].tolist()))


def remove_channels(dg: tp.DependencyGraph, model: nn.Module, group: tp.Group, members: list[str],
                    shape: GroupShape, idxs: list[int]) -> None:
    """Remove channels ``idxs`` (from ``removal``) of ``group`` in ``model`` (DepGraph's), with
    what goes with them: a fused query/key/value layer done layer by layer, the attention module's
    head counts and per-head tables updated.

    Raises:
        PruneError: naming the group.
    """
    if not idxs:
        return
    if shape.heads and shape.repeats > 1:
        _remove_fused(dg, group, members, shape, idxs)
    else:
        _remove(dg, group, members, idxs)
    if shape.heads:
        _update_heads(model, members, shape, idxs)


def group_importance(dg: tp.DependencyGraph, group: tp.Group, shape: GroupShape, p: int) -> torch.Tensor:
    """Per-channel importance of ``group``: Torch-Pruning's group magnitude (the p-norm of every
    coupled weight slice, averaged over the group); for a fused query/key/value layer, the same
    computed layer by layer (DepGraph's split mapping misplaces its blocks)."""
    if not (shape.heads and shape.repeats > 1):
        return tp.importance.GroupMagnitudeImportance(p=p)(group)
    block = shape.channels // shape.repeats
    imp = torch.zeros(shape.channels)
    seen: set[int] = set()
    for dep, _ in group:
        module = dep.target.module
        if id(module) in seen or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        seen.add(id(module))
        w = module.weight.detach().abs().pow(p)
        if dg.is_out_channel_pruning_fn(dep.handler):
            imp += w.reshape(w.shape[0], -1).sum(1)
            if module.bias is not None:
                imp += module.bias.detach().abs().pow(p)
        elif w.shape[1] == block:
            imp += w.transpose(0, 1).reshape(block, -1).sum(1).repeat(shape.repeats)
    return imp


def _remove_fused(dg: tp.DependencyGraph, group: tp.Group, members: list[str], shape: GroupShape,
                  idxs: list[int]) -> None:
    """Whole heads out of a fused query/key/value layer (GPT-2's ``c_attn``): its rows of every
    block, and the consumers' inputs (the attention output, one block wide) at the heads' positions.
    Done layer by layer: DepGraph's split mapping misplaces the blocks of a fused projection."""
    if not idxs:
        return
    block = shape.channels // shape.repeats
    within = sorted({i % block for i in idxs})
    done: set[int] = set()
    try:
        for dep, _ in group:
            module = dep.target.module
            if id(module) in done or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                continue
            pruner = dg.get_pruner_of_module(module)
            if dg.is_out_channel_pruning_fn(dep.handler):
                pruner.prune_out_channels(module, idxs)
            elif pruner.get_in_channels(module) == block:
                pruner.prune_in_channels(module, within)
            else:
                raise PruneError(f"{type(module).__name__} reads {pruner.get_in_channels(module)} channels of a "
                                 f"fused projection of {shape.repeats} x {block}")
            done.add(id(module))
    except PruneError:
        raise
    except Exception as e:
        raise PruneError(f"removing heads of {members} failed: {type(e).__name__}: {e}") from None


def _update_heads(model: nn.Module, members: list[str], shape: GroupShape, idxs: list[int]) -> None:
    """Head counts of the attention module holding ``members`` (their longest common parent)."""
    parts = [m.split(".") for m in members]
    common: list[str] = []
    for level in zip(*[p[:-1] for p in parts]):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    attention = model.get_submodule(".".join(common)) if common else model
    block = shape.channels // shape.repeats
    removed = {(i % block) // shape.unit for i in idxs}
    kept = [h for h in range(shape.heads) if h not in removed]
    layers = {model.get_submodule(m) for m in members}
    update_head_counts(attention, layers, shape.heads, shape.unit, kept)


def _foreign_param(item: object, channels: int) -> bool:
    """A bare parameter DepGraph couples with the group, along a dimension that is not as long as
    the group's channels: a per-head table (a relative position bias, met through the attention
    scores), not a copy of the channels. It is left to the head update."""
    dep = item.dep  # type: ignore[attr-defined]
    if dep.target.type != tp.ops.OPTYPE.PARAMETER or not item.idxs:  # type: ignore[attr-defined]
        return False
    dim = getattr(getattr(dep.handler, "__self__", None), "pruning_dim", -1)
    return dep.target.module.shape[dim] != channels


def _remove(dg: tp.DependencyGraph, group: tp.Group, members: list[str], idxs: list[int]) -> None:
    if not idxs:
        return
    root = group[0].dep
    try:
        pruning = dg.get_pruning_group(root.target.module, root.handler, sorted(idxs))
        pruning._group = [item for item in pruning._group if not _foreign_param(item, len(group[0].idxs))]
        pruning.prune()
    except Exception as e:
        raise PruneError(f"removing channels of group {members} failed: {type(e).__name__}: {e}") from None


def _trial(model: nn.Module, example_input: torch.Tensor | Inputs, inventory: Inventory,
           gids: list[str]) -> str:
    """Remove one unit (a channel, a head) from each of the groups ``gids`` of a fresh copy and run
    it; the error it raises (empty when the model still returns its logits)."""
    ratios = {}
    for gid in gids:
        info = inventory[gid]
        units = info.heads or info.out_channels
        ratios[gid] = (min(1.5 / max(units, 2), 0.99), 1)  # one unit of the group
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


def verified(model: nn.Module, example_input: torch.Tensor | Inputs, inventory: Inventory) -> Inventory:
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
            refused.update({g: f"removing its channels together with other groups' breaks the model ({error})"
                            for g in gids})
        return False

    search(list(inventory.groups))
    if not refused:
        return inventory
    layers = []
    for layer in inventory.layers:
        if layer.group in refused:
            why = f"structured pruning off for its group: removing its channels breaks the model ({refused[layer.group]})"
            layer = replace(layer, group=None, heads=0, note=why)
        layers.append(layer)
    groups = {g: m for g, m in inventory.groups.items() if g not in refused}
    return replace(inventory, layers=tuple(layers), groups=groups)


@torch.no_grad()
def _unstructured(model: nn.Module, plan: PruningPlan, names: list[str], seed: int = 0) -> None:
    modules = dict(model.named_modules())
    if plan.scope == "global":
        method = get_method(plan.method)
        if method.kind == "semi-structured":
            for name in names:
                modules[name].weight.mul_(nm_mask(modules[name].weight))
            return
        assert method.score is not None and plan.ratio is not None
        scores = [method.score(modules[n].weight, _generator(n, seed)) for n in names]
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
    for name in names:
        method = get_method(plan.method_of(name))
        ratio = plan.layers[name].ratio
        w = modules[name].weight
        if ratio == 0:
            continue
        if method.kind == "semi-structured":
            w.mul_(nm_mask(w))
        else:
            assert method.score is not None
            w.mul_(unstructured_mask(method.score(w, _generator(name, seed)), ratio))


def apply_plan(model: nn.Module, plan: PruningPlan, example_input: torch.Tensor | Inputs,
               inventory: Inventory | None = None, *, seed: int = 0, round_to: int | None = None) -> nn.Module:
    """Return a pruned copy of ``model``; ``model`` itself is not modified.

    Structured layers are pruned first (shapes change), then unstructured masks are computed on
    what remains. ``seed`` varies the masks of random methods (the same seed, the same masks).
    ``round_to`` (local structured plans; not part of the plan format) rounds the channels each
    group keeps up to a multiple of it, so dense kernels see aligned channel counts.

    Raises:
        PlanError: a layer the model does not have, or a structured method on a layer whose
            channels cannot be removed.
        PruneError: the model cannot be pruned as asked (e.g. DepGraph cannot trace it).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    plan.check_layers(names)
    pruned = fresh_copy(model)
    structured: dict[str, tuple[float, int]] = {}
    unstructured: list[str] = []
    for name in plan.layers:
        method = get_method(plan.method_of(name))
        if method.structured:
            if inventory is not None and inventory[name].group is None:
                why = inventory.structured_error or inventory[name].note
                raise PlanError(f"layer {name!r} cannot lose output channels ({why}); use an unstructured method")
            assert method.norm_p is not None
            structured[name] = (plan.layers[name].ratio, method.norm_p)
        else:
            unstructured.append(name)
    if structured:
        is_global = plan.scope == "global"
        try:
            _structured(pruned, example_input, structured, plan.ratio if is_global else None, round_to)
            with torch.no_grad():  # DepGraph can mis-group exotic graphs (e.g. decomposed attention)
                run_model(pruned, example_input)
        except (PlanError, PruneError):
            raise
        except Exception as e:
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise PruneError(f"removing channels of {sorted(structured)} broke the model "
                             f"({type(e).__name__}: {detail}); use an unstructured method there") from None
    if unstructured:
        _unstructured(pruned, plan, unstructured, seed)
    pruned.requires_grad_(False)
    return pruned.eval()
