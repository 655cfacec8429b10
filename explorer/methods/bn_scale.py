"""Batch-norm scale (network slimming, Liu et al. 2017): a channel matters by the magnitude of its
batch-norm scale ``|gamma|`` (Torch-Pruning's ``BNScaleImportance``). Data-free; a group with no
batch norm cannot be scored and is refused with the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

from explorer.methods import register
from explorer.methods.base import ChannelMethod, refusing_scorer

if TYPE_CHECKING:
    from explorer.data import Split
    from explorer.inspect import Inventory


class BNScaleStructured(ChannelMethod):
    name = "bn-scale-structured"
    summary = "remove the output channels of smallest batch-norm scale |γ| (network slimming)"
    score_label = "|batch-norm scale γ|"

    def applies_to(self, layer: str, inventory: Inventory) -> str | None:
        why = super().applies_to(layer, inventory)
        if why:
            return why
        group = inventory[layer].group
        if group is not None and not inventory.group_batchnorms.get(group):
            return "no batch norm is coupled with its output channels, so no scale can rank them"
        return None

    def scorer(
        self, model: nn.Module, calibration: Split | None, *, global_ranking: bool = False
    ) -> Callable[[tp.Group], torch.Tensor]:
        return refusing_scorer(
            model,
            tp.importance.BNScaleImportance(normalizer="mean"),
            f"{self.name}: the group of {{root!r}} has no batch norm whose scale "
            "could rank its channels; use another method there",
        )


register(BNScaleStructured())
