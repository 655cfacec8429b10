"""Activation: a channel matters by how strongly it fires on the calibration data, the mean
absolute value it feeds the layers that read it (Torch-Pruning's ``ActivationImportance``, with
the statistics accumulated over every calibration batch rather than the last one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

from explorer.methods import register
from explorer.methods.base import ChannelMethod, require_calibration
from explorer.methods.calibration import input_abs_means

if TYPE_CHECKING:
    from explorer.data import Split


class _MeanActivation(tp.importance.ActivationImportance):
    """``ActivationImportance`` reading its per-layer statistic from a dict instead of a hook."""

    def __init__(self, stats: dict[nn.Module, torch.Tensor]) -> None:
        super().__init__(normalizer="mean")
        self.stats = stats

    def __call__(self, group: tp.Group) -> torch.Tensor:
        for dep, _ in group:
            module = dep.target.module
            if module in self.stats:
                module._importance = self.stats[module]
        try:
            return super().__call__(group)
        finally:
            for dep, _ in group:
                if hasattr(dep.target.module, "_importance"):
                    del dep.target.module._importance


class ActivationStructured(ChannelMethod):
    name = "activation-structured"
    summary = (
        "remove the output channels whose activations are smallest on average (calibration data)"
    )
    score_label = "mean activation"
    needs_data = True

    def scorer(
        self, model: nn.Module, calibration: Split | None, *, global_ranking: bool = False
    ) -> Callable[[tp.Group], torch.Tensor]:
        calibration = require_calibration(
            calibration, self.name, "scores channels by their activations on calibration data"
        )
        means = input_abs_means(model, calibration)
        modules = dict(model.named_modules())
        return _MeanActivation({modules[n]: v for n, v in means.items()})


register(ActivationStructured())
