"""Layer inventory: prunable layers with shapes, params, MACs and their dependency group.

Groups come from Torch-Pruning's DepGraph: layers whose output channels are coupled (through a
residual add, a concatenation, a depthwise convolution...) share a group, and structured pruning
removes the same channels from every member. A layer whose outputs reach the model output (the
classifier) is in no structured group: its output channels are the classes. How a group loses
channels (whole attention heads, the same positions in every block of a grouped convolution) or
why it cannot (a channel shuffle) is ``explorer.groups``' part; ``nn.MultiheadAttention``'s fused
projection is a layer of its own whose structured unit is the head (``explorer.heads``).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from explorer.capabilities import ort_ops
from explorer.errors import DataError
from explorer.groups import GroupShape, Probe, attach, group_shape
from explorer.heads import FusedInProj, why_heads_fixed
from explorer.inputs import Inputs, batch_size, run_model
from explorer.models.ort_nodes import OrtWeight

__all__ = [
    "PRUNABLE_TYPES",
    "Inventory",
    "LayerInfo",
    "build_dependency_graph",
    "classified_groups",
    "count_macs",
    "inventory",
    "out_channels",
]

# OrtWeight: a weight that an op run in ONNX Runtime reads (unstructured and N:M methods only).
# FusedInProj: nn.MultiheadAttention's fused query/key/value projection (structured: whole heads).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    OrtWeight,
    FusedInProj,
)
# Channels that Torch-Pruning could remove but that we do not touch: attention's embedding
# dimension.
_UNSUPPORTED_STRUCTURED = (nn.MultiheadAttention,)


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer. ``group`` is None when its output channels cannot be removed."""

    name: str
    type: str
    shape: tuple[int, ...]  # weight shape
    params: int  # weight + bias elements
    macs: int  # multiply-accumulates for one sample
    out_channels: int
    group: str | None
    note: str = ""  # why the layer is not structurally prunable, if it is not
    # its output channels are this many attention heads: structured methods remove whole heads
    heads: int = 0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class Inventory:
    layers: tuple[LayerInfo, ...]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group id -> member layers
    total_params: int = 0
    total_macs: int = 0
    structured_error: str = ""  # why DepGraph could not trace the model (structured methods off)
    group_batchnorms: dict[str, tuple[str, ...]] = field(
        default_factory=dict
    )  # group id -> its batch norms
    ort_ops: tuple[
        str, ...
    ] = ()  # ops run in ONNX Runtime as they are (the user's own graph is exported)
    # groups holding a fused query/key/value layer (GPT-2's ``c_attn``): whole heads in three blocks
    fused_groups: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _shown(x: torch.Tensor | Inputs) -> str:
    return f"inputs {x.describe()}" if isinstance(x, Inputs) else f"input of shape {tuple(x.shape)}"


def _run(model: nn.Module, x: torch.Tensor | Inputs) -> torch.Tensor:
    try:
        out = run_model(model, x)
    except Exception as e:
        raise DataError(f"the model does not accept {_shown(x)}: {type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"the model must return (N, classes) logits for {_shown(x)}, got {shape}")
    return out


def count_macs(model: nn.Module, example_input: torch.Tensor | Inputs) -> dict[str, int]:
    """Multiply-accumulates per sample of every conv, linear and attention module (by name)."""
    macs: dict[str, int] = {}
    hooks = []
    batch = batch_size(example_input)

    def hook(name: str):  # noqa: ANN202
        def fn(module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
                macs[name] = macs.get(name, 0) + output.numel() // batch * per_out  # type: ignore[union-attr]
            elif isinstance(module, nn.Linear):
                macs[name] = macs.get(name, 0) + output.numel() // batch * module.in_features  # type: ignore[union-attr]
            elif isinstance(module, nn.MultiheadAttention):
                q = inputs[0]
                seq = q.shape[0] if not module.batch_first else q.shape[1]
                e = module.embed_dim
                inner = (
                    module.in_proj_weight.shape[0] // 3 if module.in_proj_weight is not None else e
                )
                # The q/k/v projections (a listed layer, ``in_proj``, when fused) and the output
                # projection are counted under their names: attention does not call them as
                # modules. Scores and the weighted sum are the attention's own.
                projections = 3 * seq * e * inner
                if isinstance(module._modules.get("in_proj"), FusedInProj):
                    macs[f"{name}.in_proj"] = projections
                    projections = 0
                macs[name] = projections + 2 * seq * seq * inner
                macs[f"{name}.out_proj"] = seq * inner * e

        return fn

    mha_children = {
        f"{n}.{child}"
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for child in ("out_proj", "in_proj")
    }
    for name, module in model.named_modules():
        if (
            isinstance(module, (*PRUNABLE_TYPES, nn.MultiheadAttention))
            and name not in mha_children
        ):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            _run(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return macs


def build_dependency_graph(
    model: nn.Module, example_input: torch.Tensor | Inputs
) -> tp.DependencyGraph:
    """DepGraph of ``model`` (which must have requires_grad parameters: DepGraph traces autograd).

    Torch-Pruning warns about bare ``nn.Parameter``s (e.g. a position embedding) that it leaves
    alone; that is expected here, and the warning would only clutter the CLI's stderr.
    """
    probe = Probe()  # what DepGraph's own trace does not record: head splits, channel shuffles
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        with probe:
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, forward_fn=lambda m, x: run_model(m, x)
            )
    attach(dg, model, probe)
    return dg


def output_layers(dg: tp.DependencyGraph, model: nn.Module) -> list[nn.Module]:
    """Prunable layers whose output channels reach the model output without passing another
    layer."""
    found = []
    for module in model.modules():
        if not isinstance(module, PRUNABLE_TYPES) or module not in dg.module2node:
            continue
        stack, seen = [dg.module2node[module]], set()
        reaches_output = False
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not node.outputs:
                reaches_output = True
                break
            for nxt in node.outputs:
                if not isinstance(nxt.module, (*PRUNABLE_TYPES, *_UNSUPPORTED_STRUCTURED)):
                    stack.append(nxt)
        if reaches_output:
            found.append(module)
    return found


def classified_groups(
    dg: tp.DependencyGraph, model: nn.Module
) -> list[tuple[tp.Group, list[str], GroupShape]]:
    """Every dependency group of prunable layers (output layers and attention's embedding
    dimension aside), with the names of its members and how its channels may be removed."""
    names = {m: n for n, m in model.named_modules()}
    ignored = output_layers(dg, model) + [
        m for m in model.modules() if isinstance(m, _UNSUPPORTED_STRUCTURED)
    ]
    out = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES):
        members = []
        for dep, _ in group:
            m = dep.target.module
            if (
                isinstance(m, PRUNABLE_TYPES)
                and dg.is_out_channel_pruning_fn(dep.handler)
                and m in names
            ):
                if names[m] not in members:
                    members.append(names[m])
        if members:
            out.append((group, members, group_shape(dg, group, names)))
    return out


def structured_groups(dg: tp.DependencyGraph, model: nn.Module) -> list[tuple[tp.Group, list[str]]]:
    """Every group whose out channels may be removed, with the names of its prunable members
    (groups refused by ``explorer.groups``, e.g. through a channel shuffle, are left out)."""
    classified = classified_groups(dg, model)
    refused = {m for _, members, shape in classified if shape.refused for m in members}
    return [
        (group, members)
        for group, members, shape in classified
        if not shape.refused and not refused & set(members)
    ]


_FIXED = "coupled with a layer that structured pruning does not change"


def _why_fixed(
    dg: tp.DependencyGraph, module: nn.Module, names: dict[nn.Module, str], outputs: set[str]
) -> str:
    """Why ``module``'s output channels cannot be removed: the layer they are coupled with."""
    for m, n in names.items():
        if isinstance(m, nn.MultiheadAttention) and module is m.out_proj:
            return (
                f"output projection of attention {n!r}: its channels are the embedding dimension, "
                "which structured pruning does not change (its inputs lose the heads of 'in_proj')"
            )
    if module not in dg.module2node:
        return "not called by the model's forward pass in eval mode (e.g. a training-only head)"
    try:
        pruner = dg.get_pruner_of_module(module)
        n_out = pruner.get_out_channels(module) if pruner is not None else None
        if pruner is None or n_out is None:
            return _FIXED
        group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n_out)))
    except Exception:  # the note is a courtesy; never fail the inventory over it
        return _FIXED
    coupled = [dep.target.module for dep, _ in group]
    for m in coupled:
        if isinstance(m, _UNSUPPORTED_STRUCTURED):
            return (
                f"coupled with the embedding dimension of attention {names.get(m, '?')!r}, "
                "which structured pruning does not change"
            )
    for m in coupled:
        if names.get(m) in outputs:
            return f"coupled with output layer {names[m]!r}, whose channels are the model's outputs"
    return _FIXED


def out_channels(module: nn.Module) -> int:
    """Output channels (features) of a prunable layer."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


class _Opaque(Exception):
    """The model runs ops no tracer can see through (an ONNX graph partly run in ONNX Runtime)."""


def inventory(model: nn.Module, example_input: torch.Tensor | Inputs) -> Inventory:
    """List the prunable layers of ``model`` (not modified) for an input like ``example_input``."""
    macs = count_macs(model, example_input)
    work = copy.deepcopy(model).eval()
    work.requires_grad_(True)
    group_of: dict[str, str] = {}
    groups: dict[str, tuple[str, ...]] = {}
    batchnorms: dict[str, tuple[str, ...]] = {}
    structured_error = ""
    outputs: set[str] = set()
    fixed: dict[str, str] = {}  # layer -> why its channels are fixed
    heads: dict[str, int] = {}  # layer -> attention heads its group removes whole
    fused: list[str] = []  # groups of a fused query/key/value layer
    try:
        ops = ort_ops(model)
        if ops:
            raise _Opaque(
                f"the graph runs {list(ops)} in ONNX Runtime (no torch equivalent here), so no"
                " channel can be followed through it; unstructured and 2:4 pruning work on its"
                " weights"
            )
        dg = build_dependency_graph(work, example_input)
        names = {m: n for n, m in work.named_modules()}
        outputs = {names[m] for m in output_layers(dg, work)}
        order = {n: i for i, (n, _) in enumerate(work.named_modules())}
        classified = classified_groups(dg, work)
        refused = {n for _, members, shape in classified if shape.refused for n in members}
        for group, members, shape in classified:
            members = sorted(members, key=order.__getitem__)
            if shape.refused:
                for n in members:
                    fixed[n] = f"structured pruning off for its group: {shape.refused}"
                continue
            if refused & set(members):  # a layer also in a refused group: refused with it
                for n in members:
                    fixed.setdefault(
                        n, "structured pruning off: coupled with a group that cannot lose channels"
                    )
                continue
            gid = members[0]
            groups[gid] = tuple(members)
            batchnorms[gid] = tuple(
                dict.fromkeys(
                    names[dep.target.module]
                    for dep, _ in group
                    if isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm)
                    and dep.target.module in names
                )
            )
            for n in members:
                group_of[n] = gid
                heads[n] = shape.heads
            if shape.heads and shape.repeats > 1:
                fused.append(gid)
        for (
            m,
            n,
        ) in (
            names.items()
        ):  # nn.MultiheadAttention's fused projection: a group of its own, by heads
            if isinstance(m, FusedInProj):
                why = why_heads_fixed(m.owner)
                if why:
                    fixed[n] = why
                else:
                    groups[n], group_of[n], heads[n] = (n,), n, m.owner.num_heads
        fixed.update(
            {
                n: _why_fixed(dg, m, names, outputs)
                for m, n in names.items()
                if isinstance(m, PRUNABLE_TYPES)
                and n not in group_of
                and n not in outputs
                and n not in fixed
            }
        )
    except _Opaque as e:
        structured_error = str(e)
    except Exception as e:  # untraceable model: structured pruning is off, the rest works
        structured_error = f"DepGraph could not trace the model: {type(e).__name__}: {e}"

    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = module.weight
        params = weight.numel() + (module.bias.numel() if module.bias is not None else 0)
        out_ch = out_channels(module)
        note = ""
        if name not in group_of:
            if structured_error:
                note = (
                    "structured pruning off: part of the graph runs in ONNX Runtime"
                    if ort_ops(model)
                    else "structured pruning off: model not traceable"
                )
            elif name in outputs:
                note = "output layer: its channels are the model's outputs"
            else:
                note = fixed.get(name, _FIXED)
        layers.append(
            LayerInfo(
                name=name,
                type=getattr(module, "display_type", type(module).__name__),
                shape=tuple(weight.shape),
                params=params,
                macs=macs.get(name, 0),
                out_channels=out_ch,
                group=group_of.get(name),
                note=note,
                heads=heads.get(name, 0),
            )
        )
    return Inventory(
        layers=tuple(layers),
        groups=groups,
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(macs.values()),
        structured_error=structured_error,
        group_batchnorms=batchnorms,
        ort_ops=ort_ops(model),
        fused_groups=tuple(fused),
    )
