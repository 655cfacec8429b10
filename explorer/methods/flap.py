"""FLAP (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning"): a channel matters by how
much its input to the next layers fluctuates, ``Var(X_j) * ||W_:,j||^2`` summed over the layers
that read it; and what a removed channel contributed on average, ``W_:,j * mean(X_j)``, is added to
those layers' biases (bias compensation), a recovery that needs no training. Statistics from the
calibration data. Compensation is exact for linear layers and, for convolutions, away from the
zero-padded border."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

from explorer.methods import register
from explorer.methods.base import ChannelMethod, refusing_scorer, require_calibration
from explorer.methods.calibration import input_moments

if TYPE_CHECKING:
    from explorer.data import Split

_READS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def _readers(group: tp.Group) -> list[tuple[nn.Module, list[int], list[int]]]:
    """(layer, its input indices, the group's root indices) of the conv/linear layers reading the
    group's channels. A grouped convolution (RegNet's) reads them too, each through the outputs of
    its own group; a depthwise convolution loses its outputs with them: it is not a reader here."""
    out = []
    for i, (dep, idxs) in enumerate(group):
        m = dep.target.module
        groups = getattr(m, "groups", 1)
        if (
            dep.handler in _READS
            and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
            and (groups == 1 or groups != m.in_channels)
        ):
            out.append((m, list(idxs), list(group[i].root_idxs)))
    return out


def _columns(m: nn.Module) -> torch.Tensor:
    """``(in_channels, out, kernel)``: the weights each input channel is multiplied by, zero for
    the outputs of other groups (``W_:,j`` of the paper)."""
    w = m.weight.detach()
    groups = getattr(m, "groups", 1)
    if groups == 1:
        return w.transpose(0, 1).reshape(w.shape[1], w.shape[0], -1)
    per_in, per_out = w.shape[1], w.shape[0] // groups
    blocks = w.reshape(groups, per_out, per_in, -1).permute(0, 2, 1, 3)  # (g, in/g, out/g, k)
    cols = w.new_zeros(groups, per_in, groups, per_out, blocks.shape[-1])
    for g in range(groups):
        cols[g, :, g] = blocks[g]
    return cols.reshape(groups * per_in, w.shape[0], -1)


class _Fluctuation(tp.importance.GroupMagnitudeImportance):
    def __init__(self, moments: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(p=2, normalizer="mean")
        self.moments = moments

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        # Summed into the root's channels by their root index: a reader behind a flatten reads
        # every channel at several positions, all of which count for that channel.
        total, found = torch.zeros(len(group[0].idxs)), False
        for m, idxs, root in _readers(group):
            if m not in self.moments:
                continue
            _, var = self.moments[m]
            w = _columns(m)[idxs].flatten(1)  # (inputs read, out * kernel)
            total.scatter_add_(0, torch.tensor(root), (var[idxs] * w.pow(2).sum(1)).float())
            found = True
        return self._normalize(total, self.normalizer) if found else None


class FlapStructured(ChannelMethod):
    name = "flap-structured"
    summary = (
        "remove the output channels whose input to the next layers fluctuates least, and add what"
        " they contributed on average to those layers' biases (FLAP: training-free; calibration"
        " data)"
    )
    score_label = "fluctuation Var(X)·‖W‖²"
    needs_data = True

    def _moments(
        self, model: nn.Module, calibration: Split | None
    ) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        calibration = require_calibration(
            calibration, self.name, "scores channels with statistics of calibration data"
        )
        modules = dict(model.named_modules())
        return {modules[n]: v for n, v in input_moments(model, calibration).items()}

    def scorer(
        self, model: nn.Module, calibration: Split | None, *, global_ranking: bool = False
    ) -> Callable[[tp.Group], torch.Tensor]:
        return refusing_scorer(
            model,
            _Fluctuation(self._moments(model, calibration)),
            f"{self.name}: no layer reads the channels of {{root!r}}'s group "
            "through a convolution or linear layer, so their fluctuation is "
            "unknown; use another method",
        )

    def compensation(
        self, model: nn.Module, calibration: Split | None
    ) -> Callable[[tp.Group], None]:
        moments = self._moments(model, calibration)

        def before(group: tp.Group) -> None:
            # Added before the channels go: a reader whose own outputs are in the group (a residual
            # block) then loses the same bias entries as its outputs, and no index is remapped.
            deltas = []
            with torch.no_grad():
                for m, idxs, _ in _readers(group):
                    if m not in moments or not idxs:
                        continue
                    mean, _ = moments[m]
                    contribution = _columns(m)[idxs].sum(2).T  # (out, removed)
                    deltas.append((m, contribution @ mean[idxs].to(contribution.dtype)))
                for m, delta in deltas:
                    if m.bias is None:
                        m.bias = nn.Parameter(delta.clone(), requires_grad=m.weight.requires_grad)
                    else:
                        m.bias.add_(delta)
            return None

        return before


register(FlapStructured())
