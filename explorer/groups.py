"""How a dependency group's channels may be removed: what Torch-Pruning's DepGraph does not say.

DepGraph tells which layers' channels are coupled. Three structures it does not describe are
found here, from one traced forward pass (the one DepGraph itself records, seen through a
``TorchFunctionMode``), in the user's module and equally in a ``.pt2`` program or an ONNX graph
turned into layers (the same tensors flow through the same shapes):

- **attention heads**: a linear layer's output reshaped from ``(..., H * D)`` to ``(..., H, D)``
  (also after splitting a fused query/key/value output in three). Its group loses whole heads:
  blocks of ``D`` channels, at the same positions in every member, so the head size stays ``D``
  (Torch-Pruning's ``prune_num_heads``).
- **channel groups**: a grouped convolution (RegNet, ResNeXt) or a group norm, whose channels come
  in ``G`` equal blocks; the same positions are removed from every block (Torch-Pruning's
  ``in_channel_groups`` / ``out_channel_groups``), so every group keeps the same width.
- **channel shuffles**: a 4-D ``(N, C, H, W)`` tensor reshaped to ``(N, G, C/G, H, W)``
  (ShuffleNet's channel shuffle, a group norm written out): the reordering that follows is not an
  index mapping DepGraph knows, so a group whose channels pass through it is refused with that
  reason (removing them would silently compute something else).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["GroupShape", "Probe", "attach", "expand", "group_shape", "unit_importance"]

SHUFFLE_REASON = (
    "its channels pass through a channel shuffle (reshaped into groups and reordered), "
    "which Torch-Pruning's index mapping does not follow"
)
UNMAPPED_REASON = (
    "its channels pass through a reshape whose channel counts Torch-Pruning cannot infer"
)


@dataclass(frozen=True)
class HeadSplit:
    """Channels ``[offset, offset + heads * head_dim)`` of a layer's output, reshaped into heads."""

    offset: int
    heads: int
    head_dim: int


class Probe(TorchFunctionMode):
    """Records, during one forward pass, which linear outputs are split into attention heads and
    which 4-D tensors have their channels reshaped into groups (a shuffle)."""

    def __init__(self) -> None:
        super().__init__()
        self._linear: dict[
            int, tuple[torch.Tensor, torch.Tensor, int]
        ] = {}  # id(out) -> (out, weight, offset)
        self.heads: dict[int, list[HeadSplit]] = {}  # id(weight) -> its head splits
        self.shuffles: list[Any] = []  # grad_fn of every channel-splitting reshape

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "linear" and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
            if isinstance(weight, torch.Tensor):
                self._linear[id(out)] = (out, weight, 0)
        elif x is not None and id(x) in self._linear and isinstance(out, (tuple, list)):
            self._pieces(x, out)
        elif x is not None and isinstance(out, torch.Tensor):
            self._reshaped(x, out)
        return out

    def _pieces(self, x: torch.Tensor, pieces: tuple | list) -> None:
        """A linear output split along its last dim (a fused query/key/value projection)."""
        _, weight, offset = self._linear[id(x)]
        tensors = [p for p in pieces if isinstance(p, torch.Tensor)]
        if len(tensors) != len(pieces) or any(p.shape[:-1] != x.shape[:-1] for p in tensors):
            return
        if sum(p.shape[-1] for p in tensors) != x.shape[-1]:
            return
        for piece in tensors:
            self._linear[id(piece)] = (piece, weight, offset)
            offset += piece.shape[-1]

    def _reshaped(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if (
            id(x) in self._linear
            and out.dim() != x.dim()
            and out.numel() == x.numel()
            and out.shape[-1] == x.shape[-1]
        ):  # leading dims regrouped ((N*L, C) <-> (N, L, C)): the same channels
            self._linear[id(out)] = (out, *self._linear[id(x)][1:])
        elif (
            id(x) in self._linear
            and out.dim() == x.dim() + 1
            and out.shape[:-2] == x.shape[:-1]
            and out.shape[-2] > 1
            and out.shape[-1] > 1
            and out.shape[-2] * out.shape[-1] == x.shape[-1]
        ):
            _, weight, offset = self._linear[id(x)]
            split = HeadSplit(offset, int(out.shape[-2]), int(out.shape[-1]))
            known = self.heads.setdefault(id(weight), [])
            if split not in known:
                known.append(split)
        elif (
            x.dim() == 4
            and out.dim() == 5
            and out.shape[0] == x.shape[0]
            and out.shape[1] > 1
            and out.shape[2] > 1
            and out.shape[1] * out.shape[2] == x.shape[1]
            and out.shape[3:] == x.shape[2:]
            and out.grad_fn is not None
        ):
            self.shuffles.append(out.grad_fn)


# Torch-Pruning 1.6 divides by an inferred channel count of 0 on some reshapes (a full-size
# ShuffleNetV2's channel shuffle) and the whole graph fails to build. Such a reshape is left without
# an index mapping and remembered: the groups through it are refused (UNMAPPED_REASON).
_reshape_mapping = tp.dependency.index_mapping.update_reshape_index_mapping


def _guarded_reshape_mapping(graph: tp.DependencyGraph, node: Any) -> None:
    try:
        _reshape_mapping(graph, node)
    except ZeroDivisionError:
        graph.__dict__.setdefault("explorer_unmapped", set()).add(node)


if tp.dependency.index_mapping.update_reshape_index_mapping is _reshape_mapping:
    tp.dependency.index_mapping.update_reshape_index_mapping = _guarded_reshape_mapping


# Torch-Pruning 1.6 maps indices into a concatenation (and out of a split) without checking that
# they exist in that piece. Where its graph holds a cycle through such a mapping (a Llama's rotary
# embedding concatenates halves of the heads), the indices grow by the offset on every turn and
# building a group never ends. An index a piece does not have is dropped: a piece of n channels
# only has indices 0..n-1.
def _bounded(mapping: type, forward: bool) -> None:
    call = mapping.__call__
    if getattr(call, "explorer_bounded", False):
        return

    def bounded(self: Any, idxs: list) -> list:
        if len(self.offset) < 2:  # a split Torch-Pruning recorded without its end (a full-size
            return []  # ShuffleNetV2's chunk): nothing maps; the trial removal checks the groups
        if self.reverse != forward:
            size = self.offset[1] - self.offset[0]
            idxs = [i for i in idxs if 0 <= i.idx < size]
        return call(self, idxs)

    bounded.explorer_bounded = True  # type: ignore[attr-defined]
    mapping.__call__ = bounded


_bounded(tp.dependency.index_mapping._ConcatIndexMapping, forward=True)  # piece -> concatenation
_bounded(tp.dependency.index_mapping._SplitIndexMapping, forward=False)  # piece -> what was split


# Torch-Pruning 1.6 stops following a group at a layer only when the very same index list reaches
# it again. Through a Swin's shifted windows (a (N, H, W, C) tensor rolled, reshaped into windows
# and back) the channels come back as ever new lists of one index each, and building one group
# never ends (even at 32 px). Its index mappings map every index on its own, so indices a layer
# already holds in the group lead nowhere new: they are not followed again (the same group).
def _covered(self: tp.Group, dep: Any, idxs: list) -> bool:
    cover = self.__dict__.setdefault("explorer_cover", {})
    seen = self.__dict__.get("explorer_seen", 0)
    if seen > len(self._group):  # the items were replaced: start over
        cover.clear()
        seen = 0
    for item_dep, item_idxs in self._group[seen:]:
        cover.setdefault((item_dep.target, item_dep.handler), set()).update(
            getattr(i, "idx", i) for i in item_idxs
        )
    self.explorer_seen = len(self._group)
    held = cover.get((dep.target, dep.handler))
    return held is not None and all(getattr(i, "idx", i) in held for i in idxs)


# Torch-Pruning's own test (the tests' oracle), also when this module is imported again.
exact_has_pruning_op = getattr(tp.Group.has_pruning_op, "explorer_exact", tp.Group.has_pruning_op)
_covered.explorer_exact = exact_has_pruning_op  # type: ignore[attr-defined]
tp.Group.has_pruning_op = _covered


def _nothing(idxs: list) -> list:
    """An index mapping that maps no channel."""
    return []


def attach(dg: tp.DependencyGraph, model: nn.Module, probe: Probe) -> None:
    """Store what ``probe`` saw on ``dg``: head splits per module, shuffle nodes."""
    by_weight = {
        id(m.weight): m
        for m in model.modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor)
    }
    dg.explorer_heads = {
        by_weight[w]: splits for w, splits in probe.heads.items() if w in by_weight
    }
    shuffles = {id(g) for g in probe.shuffles}
    dg.explorer_shuffles = {
        node for node in dg.module2node.values() if id(node.grad_fn) in shuffles
    }
    for node in dg.explorer_shuffles:
        # A group reaching a shuffle ends there: the shuffle joins the group (which is refused with
        # SHUFFLE_REASON) but nothing is mapped through it. Followed through, Torch-Pruning 1.6
        # maps a full-size ShuffleNetV2's channels as if flattened with the spatial positions
        # (index lists of C*H*W) and building one group never ends.
        for dep in node.dependencies:
            dep.index_mapping = [_nothing]
    dg.__dict__.setdefault("explorer_unmapped", set())


@dataclass(frozen=True)
class GroupShape:
    """How the ``channels`` of a group may be removed: in ``repeats`` equal blocks with the same
    positions removed from each, ``unit`` channels at a time (a head), or not at all
    (``refused``)."""

    channels: int
    repeats: int = 1
    unit: int = 1
    heads: int = 0  # attention heads per block (0: not attention)
    refused: str = ""

    @property
    def units(self) -> int:
        """What a ratio counts: heads, or channels per block."""
        return self.channels // (self.repeats * self.unit)


def _channel_groups(dg: tp.DependencyGraph, group: tp.Group) -> int:
    """Torch-Pruning's channel grouping of ``group`` (grouped convs, group norms; not depthwise)."""
    found = [1]
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels:
            continue  # depthwise: every channel is its own group, nothing to keep aligned
        pruner = dg.get_pruner_of_module(module)
        if pruner is None:
            continue
        try:
            count = (
                pruner.get_out_channel_groups(module)
                if dg.is_out_channel_pruning_fn(dep.handler)
                else pruner.get_in_channel_groups(module)
            )
        except Exception:  # a pseudo op without the notion
            continue
        if isinstance(count, int) and count > 1:
            found.append(count)
    return max(found)


def _head_shape(
    dg: tp.DependencyGraph, group: tp.Group, channels: int, names: dict[nn.Module, str]
) -> GroupShape | None:
    heads: dict[nn.Module, list[HeadSplit]] = getattr(dg, "explorer_heads", {})
    members = {dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)}
    split = {m: heads[m] for m in members if m in heads}
    if not split:
        return None
    shapes = {(len(s), s[0].heads, s[0].head_dim) for s in split.values()}
    dims = {(h.heads, h.head_dim) for s in split.values() for h in s}
    if len(shapes) != 1 or len(dims) != 1:
        counts = sorted(
            {
                f"{names.get(m, '?')}: {h.heads} heads of {h.head_dim}"
                for m, s in split.items()
                for h in s
            }
        )
        return GroupShape(
            channels,
            refused=(
                f"its attention heads differ between coupled layers ({'; '.join(counts)}), "
                "as in grouped-query attention; whole heads cannot be removed from all alike"
            ),
        )
    repeats, heads_per, head_dim = shapes.pop()
    if repeats * heads_per * head_dim != channels:
        return GroupShape(
            channels, refused=f"only part of its {channels} channels are split into attention heads"
        )
    return GroupShape(channels, repeats=repeats, unit=head_dim, heads=heads_per)


def group_shape(
    dg: tp.DependencyGraph, group: tp.Group, names: dict[nn.Module, str] | None = None
) -> GroupShape:
    """How ``group``'s channels may be removed (see the module docstring)."""
    names = names or {}
    channels = len(group[0].idxs)
    nodes = {dep.target for dep, _ in group} | {dep.source for dep, _ in group}
    if nodes & getattr(dg, "explorer_shuffles", set()):
        return GroupShape(channels, refused=SHUFFLE_REASON)
    if nodes & getattr(dg, "explorer_unmapped", set()):
        return GroupShape(channels, refused=UNMAPPED_REASON)
    heads = _head_shape(dg, group, channels, names)
    if heads is not None:
        return heads
    repeats = _channel_groups(dg, group)
    if repeats > 1 and channels % repeats == 0:
        return GroupShape(channels, repeats=repeats)
    if repeats > 1:
        return GroupShape(
            channels,
            refused=f"its {channels} channels do not split into {repeats} equal channel groups",
        )
    return GroupShape(channels)


def expand(shape: GroupShape, units: list[int]) -> list[int]:
    """Channel indices of the removed ``units`` (head or within-block positions), in every block."""
    block = shape.channels // shape.repeats
    return sorted(
        b * block + u * shape.unit + j
        for b in range(shape.repeats)
        for u in units
        for j in range(shape.unit)
    )


def unit_importance(shape: GroupShape, importance: torch.Tensor) -> torch.Tensor:
    """Per-channel importance averaged over the blocks and within each unit (Torch-Pruning's rule
    for channel groups and heads): one score per unit a ratio counts."""
    imp = importance.reshape(shape.repeats, -1).mean(0)
    return imp.reshape(-1, shape.unit).mean(1)
