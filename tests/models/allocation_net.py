"""A model the zoo does not have, for the allocation tests: a residual MLP on the digits.

``residual_mlp()`` (spec ``tests/models/allocation_net.py:residual_mlp``, data ``zoo:digits-flat``)
trains in about a second (fixed seeds, 200 AdamW steps of 256 samples). Its layers differ in width
(64 to 512) and in how much the residual paths protect them, so the best per-layer sparsity is
far from uniform.
"""

from __future__ import annotations

import torch
from torch import nn

from explorer.data import load_data

__all__ = ["ResidualMLP", "residual_mlp"]


class ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 256)
        self.wide = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
        self.narrow = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 256))
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        x = torch.relu(x + self.wide(x))
        x = torch.relu(x + self.narrow(x))
        return self.head(x)


def residual_mlp(steps: int = 200) -> nn.Module:
    """The trained model in eval mode, gradients off."""
    torch.manual_seed(0)
    model = ResidualMLP()
    data = load_data("zoo:digits-flat")
    assert data.train is not None and data.train.y is not None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.train), (256,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
        opt.step()
    model.requires_grad_(False)
    return model.eval()
