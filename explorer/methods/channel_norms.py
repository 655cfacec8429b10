"""Channel norms: output channels of smallest Lp norm, summed over the coupled layers (Li et al.
2017), scored by Torch-Pruning's ``GroupMagnitudeImportance``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

from explorer.heads import fused_magnitude, mha_head_importance
from explorer.methods import register
from explorer.methods.base import ChannelMethod

if TYPE_CHECKING:
    from explorer.data import Split
    from explorer.groups import GroupShape


class ChannelNorm(ChannelMethod):
    p: int

    def scorer(
        self, model: nn.Module, calibration: Split | None, *, global_ranking: bool = False
    ) -> Callable[[tp.Group], torch.Tensor]:
        # Global ranking compares groups of different sizes: each group's scores are normalised by
        # their mean (Torch-Pruning's default normaliser, spelt out).
        return tp.importance.GroupMagnitudeImportance(p=self.p, normalizer="mean")

    def fused_scores(
        self, dg: tp.DependencyGraph, group: tp.Group, shape: GroupShape
    ) -> torch.Tensor:
        return fused_magnitude(dg, group, shape, self.p)

    def head_scores(self, mha: nn.MultiheadAttention) -> torch.Tensor:
        return mha_head_importance(mha, self.p)


class L1Structured(ChannelNorm):
    name = "l1-structured"
    summary = "remove the output channels of smallest L1 norm (coupled layers with them)"
    score_label = "group L1 norm"
    p = 1


class L2Structured(ChannelNorm):
    name = "l2-structured"
    summary = "remove the output channels of smallest L2 norm (coupled layers with them)"
    score_label = "group L2 norm"
    p = 2


register(L1Structured())
register(L2Structured())
