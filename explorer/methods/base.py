"""What a pruning method is: a strategy that scores weights or channels, given a context.

In the spirit of ``torch.nn.utils.prune``'s ``compute_mask`` and Torch-Pruning's ``Importance``:

- a :class:`WeightMethod` (unstructured or N:M) turns one layer's weight into its pruned weight:
  by default the weight times a keep-mask computed from per-weight ``scores`` (higher = more
  important), the smallest ``round(ratio * n)`` going, exactly as ``prune.L1Unstructured`` does;
  a method that also updates the surviving weights (SparseGPT) overrides ``prune_weight``.
- a :class:`ChannelMethod` (structured) gives a Torch-Pruning importance that scores the output
  channels of a dependency group; the lowest go, with every coupled layer.

A method sees a :class:`LayerContext` (the model being pruned, the layer, a seeded generator and,
on demand, the calibration data) and never modifies what it is given. It declares its kind, which
layers it applies to (with the reason when not), whether it reads data, and what it can do for a
dense CPU's latency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch_pruning as tp
from torch import nn

from explorer.errors import PlanError

if TYPE_CHECKING:
    from explorer.data import Split
    from explorer.groups import GroupShape
    from explorer.inspect import Inventory

__all__ = [
    "ChannelMethod",
    "Kind",
    "LayerContext",
    "Method",
    "WeightMethod",
    "layer_generator",
    "layer_is_hookable",
    "require_calibration",
    "unstructured_mask",
]

Kind = Literal["unstructured", "semi-structured", "structured"]

ZEROS_NOTE = (
    "Zeros only: ONNX Runtime's dense CPU kernels do the same work, so latency does not drop; "
    "the compressed (gzip) file shrinks."
)
CHANNELS_NOTE = (
    "Channels are removed: the ONNX model really shrinks and dense CPU kernels run faster."
)


def layer_generator(layer: str, seed: int = 0) -> torch.Generator:
    """A generator seeded by the layer name (stable across processes, unlike ``hash()``) and
    ``seed``:
    random methods give the same masks for the same layer and seed."""
    return torch.Generator().manual_seed(
        (sum(ord(c) * 31**i for i, c in enumerate(layer)) + 7919 * seed) % 2**31
    )


HOOKABLE_TYPES = ("Linear", "Conv1d", "Conv2d")
FUSED_IN_PROJ = "MultiheadAttention.in_proj"  # explorer.heads.FusedInProj's display type


def layer_is_hookable(layer: str, inventory: Inventory) -> str | None:
    """None if the inputs of ``layer`` can be captured for data-aware criteria, else why not."""
    info = inventory[layer]
    if info.type not in HOOKABLE_TYPES:
        return (
            f"its inputs cannot be captured ({info.type}: data-aware criteria read the inputs of"
            " linear and conv layers)"
        )
    if info.macs == 0:
        return (
            "the forward pass in eval mode never calls it (e.g. a training-only head), so it sees"
            " no data"
        )
    return None


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask zeroing ``round(ratio * n)`` lowest scores, exactly as ``prune.L1Unstructured``.

    Its ``topk`` is the reference; where the ``k``-th lowest score ties with none beyond it the
    ``k`` lowest are one set whatever the order, found by ``kthvalue`` and a comparison (4-8x
    faster on a 2.4M-weight layer: 24-51 ms against 78-333 ms); where ties straddle the boundary,
    or NaNs make the count fall short, ``topk`` picks."""
    flat = scores.reshape(-1)
    k = round(ratio * flat.numel())
    if not k:
        return torch.ones_like(scores, dtype=torch.bool)
    keep = flat > torch.kthvalue(flat, k).values  # a NaN compares false: never counted as kept
    if int(keep.sum()) == flat.numel() - k:
        return keep.view(scores.shape)
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.view(-1)[torch.topk(flat, k=k, largest=False).indices] = False
    return mask


@dataclass
class LayerContext:
    """What a method may look at to prune one layer.

    ``model`` is the model being pruned (a fresh copy, possibly already shrunk by structured
    methods); ``calibration`` is the data a data-aware method reads (None when there is none).
    """

    model: nn.Module
    layer: str
    seed: int = 0
    calibration: Split | None = None
    _module: nn.Module | None = field(default=None, repr=False)

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            self._module = dict(self.model.named_modules())[self.layer]
        return self._module

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight.detach()

    def generator(self) -> torch.Generator:
        return layer_generator(self.layer, self.seed)

    def require_calibration(self, method: str) -> Split:
        """The calibration data, or a PlanError saying that ``method`` needs some."""
        return require_calibration(self.calibration, method)


def require_calibration(
    calibration: Split | None, method: str, uses: str = "scores weights with calibration data"
) -> Split:
    """``calibration``, or the PlanError saying that ``method`` (which ``uses`` it) needs some."""
    if calibration is None or len(calibration) == 0:
        raise PlanError(
            f"{method} {uses}, and this model has none; give data with a train or validation split"
        )
    return calibration


class Method:
    """A registered pruning method. Subclasses set the class attributes and implement scoring."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    summary: ClassVar[str]
    needs_data: ClassVar[bool] = False  # reads the calibration split
    supports_global: ClassVar[bool] = True  # can rank weights (channels) across layers at once
    updates_weights: ClassVar[bool] = (
        False  # changes the weights it keeps (SparseGPT), not only zeroes some
    )

    @property
    def structured(self) -> bool:
        return self.kind == "structured"

    @property
    def speeds_up_dense_cpu(self) -> bool:
        """Only removed channels make dense CPU kernels (ONNX Runtime's included) faster."""
        return self.structured

    @property
    def runtime_note(self) -> str:
        return CHANNELS_NOTE if self.structured else ZEROS_NOTE

    @property
    def data_note(self) -> str:
        """Said next to the method where it is chosen: what data it reads, if any."""
        return (
            "scores with the model's calibration split (train, else validation data)"
            if self.needs_data
            else ""
        )

    def applies_to(self, layer: str, inventory: Inventory) -> str | None:
        """None if the method can prune ``layer``, else why it cannot (shown next to the layer)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class WeightMethod(Method):
    """Unstructured or N:M: zeros inside a layer's weight; the layer keeps its shape."""

    kind: ClassVar[Kind] = "unstructured"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        """Importance of every weight (the weight's shape); the lowest go first."""
        raise NotImplementedError(f"{self.name} does not rank weights one by one")

    def mask(self, ctx: LayerContext, ratio: float) -> torch.Tensor:
        """Keep-mask (bool, the weight's shape) at ``ratio``."""
        return unstructured_mask(self.scores(ctx), ratio)

    def prune_weight(self, ctx: LayerContext, ratio: float) -> torch.Tensor:
        """The layer's new weight at ``ratio`` (a new tensor; ratio 0 leaves it as it is)."""
        if ratio == 0:
            return ctx.weight.clone()
        return ctx.weight * self.mask(ctx, ratio)


class ChannelMethod(Method):
    """Structured: output channels of a dependency group are removed, coupled layers with them."""

    kind: ClassVar[Kind] = "structured"
    score_label: ClassVar[str] = "channel importance"  # what the per-channel bars show

    def scorer(
        self, model: nn.Module, calibration: Split | None, *, global_ranking: bool = False
    ) -> Callable[[tp.Group], torch.Tensor]:
        """A Torch-Pruning importance for the groups of ``model`` (the model being pruned, before
        any
        channel goes): called with a group, it returns one score per channel, lowest first to go.
        Whatever the scores need (gradients, calibration statistics) is computed here, once.
        ``global_ranking``: the scores are compared across groups (normalise them per group)."""
        raise NotImplementedError

    def compensation(
        self, model: nn.Module, calibration: Split | None
    ) -> Callable[[tp.Group], Callable[[], None] | None] | None:
        """Optional training-free recovery: called with each concrete pruning group (its channels to
        go) just before it is pruned, it returns what to run right after (e.g. FLAP's bias
        compensation). None: nothing to do."""
        return None

    def fused_scores(
        self, dg: tp.DependencyGraph, group: tp.Group, shape: GroupShape
    ) -> torch.Tensor | None:
        """Per-channel scores of a group holding a fused query/key/value layer (GPT-2's ``c_attn``),
        which Torch-Pruning's importances misplace (its split mapping): None where the method
        cannot score one (the group is then refused with the reason)."""
        return None

    def head_scores(self, mha: nn.MultiheadAttention) -> torch.Tensor | None:
        """One score per head of an ``nn.MultiheadAttention`` (its fused ``in_proj`` is no DepGraph
        group): None where the method cannot score them."""
        return None

    def scores_heads(self) -> bool:
        """Can the method score fused attention projections (``fused_scores`` and
        ``head_scores``)?"""
        return type(self).head_scores is not ChannelMethod.head_scores

    def applies_to(self, layer: str, inventory: Inventory) -> str | None:
        info = inventory[layer]
        if info.group is None:
            return (
                inventory.structured_error or info.note or "its output channels cannot be removed"
            )
        if info.type == FUSED_IN_PROJ and not self.scores_heads():
            return (
                f"{self.name} scores Torch-Pruning groups; the heads of nn.MultiheadAttention's"
                " fused projection are scored by their weights' norm (l1-structured,"
                " l2-structured)"
            )
        if (
            info.group in inventory.fused_groups
            and type(self).fused_scores is ChannelMethod.fused_scores
        ):
            return (
                f"{self.name} cannot score the heads of a fused query/key/value layer"
                " (Torch-Pruning misplaces its blocks); l1-structured and l2-structured can"
            )
        return None


def refusing_scorer(
    model: nn.Module, importance: Callable[[tp.Group], torch.Tensor | None], why: str
) -> Callable[[tp.Group], torch.Tensor]:
    """``importance`` as a scorer that refuses a group it cannot score (it returned None) with a
    PlanError naming the group's root layer: ``why`` is formatted with ``root``."""
    names = {m: n for n, m in model.named_modules()}

    def score(group: tp.Group) -> torch.Tensor:
        found = importance(group)
        if found is None:
            raise PlanError(why.format(root=names.get(group[0].dep.target.module, "?")))
        return found

    return score
