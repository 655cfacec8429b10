"""Attention heads: ``nn.MultiheadAttention``'s fused projection as a layer; whole heads removed.

``nn.MultiheadAttention`` keeps its query/key/value projection as one parameter (``in_proj_weight``,
3E x E) rather than a layer, so on a torchvision ViT a quarter of the weights would be in no listed
layer. ``FusedInProj`` lists it: a child module whose ``weight`` *is* that parameter (no copy, no
new state-dict key), so unstructured and N:M methods prune it like any layer, and structured methods
remove whole heads: the head's rows of the query, key and value projections and its columns of the
output projection. The module then computes attention with fewer heads of the same size
(``HeadPrunedMultiheadAttention``: the same parameters, its own forward, since PyTorch's requires
the heads to span the embedding).

Layers split into heads by reshaping (Hugging Face's ``q_proj``/``k_proj``/``v_proj``, found by
``explorer.groups``) lose whole heads through DepGraph; ``update_head_counts`` then corrects the
attention module's head counts (``num_heads``, ``all_head_size``...) and per-head tensors (a
relative position bias table), as Torch-Pruning's ``prune_num_heads`` leaves to its user.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from explorer.errors import PruneError
from explorer.groups import GroupShape

__all__ = [
    "FusedInProj",
    "HeadPrunedMultiheadAttention",
    "attach_in_proj",
    "fused_magnitude",
    "mha_head_importance",
    "remove_fused_heads",
    "remove_mha_heads",
    "update_group_heads",
    "update_head_counts",
    "why_heads_fixed",
]


class FusedInProj(nn.Module):
    """``nn.MultiheadAttention``'s fused query/key/value projection, listed as a layer."""

    display_type = "MultiheadAttention.in_proj"

    def __init__(self, owner: nn.MultiheadAttention) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: the owner holds this one

    @property
    def owner(self) -> nn.MultiheadAttention:
        return self._owner  # type: ignore[return-value]

    @property
    def weight(self) -> torch.Tensor:
        return self.owner.in_proj_weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.owner.in_proj_bias

    @property
    def out_channels(self) -> int:
        return int(self.owner.in_proj_weight.shape[0])

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor:  # the projection alone (never called by the owner)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        heads = self.owner.num_heads
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]} (q, k, v of {heads} heads)"


def attach_in_proj(model: nn.Module) -> None:
    """Give every ``nn.MultiheadAttention`` with a fused projection its ``in_proj`` layer."""
    for module in list(model.modules()):
        if (
            isinstance(module, nn.MultiheadAttention)
            and module.in_proj_weight is not None
            and not isinstance(module._modules.get("in_proj"), FusedInProj)
        ):
            children = dict(module._modules)
            module._modules.clear()  # listed before out_proj, in the order attention runs them
            module.add_module("in_proj", FusedInProj(module))
            module._modules.update(children)


def why_heads_fixed(mha: nn.MultiheadAttention) -> str:
    """Why the heads of ``mha`` cannot be removed (empty when they can)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return "its heads cannot be removed: the attention adds learned key/value biases or zeros"
    if mha.num_heads < 2:
        return "its heads cannot be removed: the attention has a single head"
    return ""


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with fewer heads than the embedding spans (same parameter names:
    ``in_proj_weight`` is 3 * heads * head_dim x E, ``out_proj`` E x heads * head_dim)."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        heads, dim = self.num_heads, self.head_dim
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = (
            self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        )
        q = F.linear(query, wq, bq).reshape(n, length, heads, dim).transpose(1, 2)
        k = F.linear(key, wk, bk).reshape(n, key.shape[1], heads, dim).transpose(1, 2)
        v = F.linear(value, wv, bv).reshape(n, value.shape[1], heads, dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, key.shape[1], dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(n, heads, length, -1)
            scores = (
                scores.masked_fill(mask, float("-inf"))
                if mask.dtype == torch.bool
                else scores + mask
            )
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = (
                scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
            )
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, heads * dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def _head_rows(mha: nn.MultiheadAttention, heads: list[int]) -> list[int]:
    """Rows of ``in_proj_weight`` (query, key and value blocks) of ``heads``."""
    inner = mha.in_proj_weight.shape[0] // 3
    dim = inner // mha.num_heads
    return sorted(
        block * inner + h * dim + j for block in range(3) for h in heads for j in range(dim)
    )


def mha_head_importance(mha: nn.MultiheadAttention, p: int) -> torch.Tensor:
    """One score per head: the p-norm magnitude of its query, key and value rows and its output
    projection columns, averaged over its channels (as Torch-Pruning scores a head)."""
    inner = mha.in_proj_weight.shape[0] // 3
    w = mha.in_proj_weight.detach().abs().pow(p)
    per_channel = w.reshape(3, inner, -1).sum(dim=(0, 2)) + mha.out_proj.weight.detach().abs().pow(
        p
    ).sum(0)
    if mha.in_proj_bias is not None:
        per_channel = per_channel + mha.in_proj_bias.detach().abs().pow(p).reshape(3, inner).sum(0)
    return per_channel.reshape(mha.num_heads, -1).mean(1)


@torch.no_grad()
def remove_mha_heads(mha: nn.MultiheadAttention, heads: list[int]) -> None:
    """Remove ``heads`` from ``mha`` in place (it becomes a ``HeadPrunedMultiheadAttention``)."""
    if not heads:
        return
    inner = mha.in_proj_weight.shape[0] // 3
    dim = inner // mha.num_heads
    drop = set(_head_rows(mha, heads))
    keep_rows = [r for r in range(3 * inner) if r not in drop]
    keep_cols = [c for c in range(inner) if c // dim not in set(heads)]
    grad = mha.in_proj_weight.requires_grad
    mha.in_proj_weight = nn.Parameter(mha.in_proj_weight[keep_rows].clone(), requires_grad=grad)
    if mha.in_proj_bias is not None:
        mha.in_proj_bias = nn.Parameter(mha.in_proj_bias[keep_rows].clone(), requires_grad=grad)
    out = mha.out_proj
    out.weight = nn.Parameter(out.weight[:, keep_cols].clone(), requires_grad=grad)
    out.in_features = len(keep_cols)
    mha.num_heads -= len(set(heads))
    mha.head_dim = dim
    mha.__class__ = HeadPrunedMultiheadAttention
    mha._qkv_same_embed_dim = False  # keeps nn.TransformerEncoderLayer off its fused fast path


_HEAD_COUNTS = (
    "num_attention_heads",
    "num_heads",
    "n_heads",
    "n_head",
    "num_attention_heads_per_partition",
)
_HEAD_WIDTHS = (
    "all_head_size",
    "split_size",
    "inner_dim",
    "embed_dim",
    "hidden_size_per_partition",
)


@torch.no_grad()
def update_head_counts(
    attention: nn.Module, skip: set[nn.Module], heads: int, head_dim: int, kept: list[int]
) -> None:
    """After whole heads went from the layers under ``attention``: its head counts and widths
    (``num_heads``, ``all_head_size``, ``split_size``...) become ``len(kept)`` heads, and every
    tensor under it with one dimension of ``heads`` entries (a relative position bias table) keeps
    the ``kept`` heads' entries. ``skip``: the pruned layers themselves."""
    for name in _HEAD_COUNTS:
        if getattr(attention, name, None) == heads and isinstance(getattr(attention, name), int):
            setattr(attention, name, len(kept))
    for name in _HEAD_WIDTHS:
        if getattr(attention, name, None) == heads * head_dim and isinstance(
            getattr(attention, name), int
        ):
            setattr(attention, name, len(kept) * head_dim)
    index = torch.tensor(kept)
    for module in attention.modules():
        if module in skip:
            continue
        for store in (module._parameters, module._buffers):
            for key, t in list(store.items()):
                if (
                    t is None
                    or not t.is_floating_point()
                    or t.dim() < 2
                    or list(t.shape).count(heads) != 1
                ):
                    continue
                dim = list(t.shape).index(heads)
                value = t.index_select(dim, index).clone()
                store[key] = (
                    nn.Parameter(value, requires_grad=t.requires_grad)
                    if isinstance(t, nn.Parameter)
                    else value
                )


def fused_magnitude(
    dg: tp.DependencyGraph, group: tp.Group, shape: GroupShape, p: int
) -> torch.Tensor:
    """Per-channel p-norm magnitude of a group holding a fused query/key/value layer (GPT-2's
    ``c_attn``), Torch-Pruning's group magnitude computed layer by layer: DepGraph's split mapping
    misplaces the blocks of a fused projection."""
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


def remove_fused_heads(
    dg: tp.DependencyGraph, group: tp.Group, members: list[str], shape: GroupShape, idxs: list[int]
) -> None:
    """Whole heads out of a fused query/key/value layer (GPT-2's ``c_attn``): its rows of every
    block, and the consumers' inputs (the attention output, one block wide) at the heads' positions.
    Done layer by layer: DepGraph's split mapping misplaces the blocks of a fused projection.

    Raises:
        PruneError: naming the layers.
    """
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
                raise PruneError(
                    f"{type(module).__name__} reads {pruner.get_in_channels(module)} channels of a "
                    f"fused projection of {shape.repeats} x {block}"
                )
            done.add(id(module))
    except PruneError:
        raise
    except Exception as e:
        raise PruneError(f"removing heads of {members} failed: {type(e).__name__}: {e}") from None


def update_group_heads(
    model: nn.Module, members: list[str], shape: GroupShape, idxs: list[int]
) -> None:
    """After channels ``idxs`` (whole heads) went from ``members``: the head counts of the
    attention module holding them (their longest common parent)."""
    parts = [m.split(".") for m in members]
    common: list[str] = []
    for level in zip(*[p[:-1] for p in parts], strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    attention = model.get_submodule(".".join(common)) if common else model
    block = shape.channels // shape.repeats
    removed = {(i % block) // shape.unit for i in idxs}
    kept = [h for h in range(shape.heads) if h not in removed]
    layers = {model.get_submodule(m) for m in members}
    update_head_counts(attention, layers, shape.heads, shape.unit, kept)
