"""A model the zoo does not have, for benchmarks: a bottleneck ResNet on the 32x32 digits.

``residual_net()`` (a ``PATH.py:FUNC`` model spec, data ``zoo:digits-32``) builds it with seeded
random convolutions, sets its batch-norm statistics from the training split and solves its linear
head by ridge regression on the pooled features: a useful classifier (about 90% test accuracy) in
a couple of seconds, with no training loop and no shipped weights.
"""

from __future__ import annotations

import torch
from torch import nn

from explorer.data import load_data

__all__ = ["ResidualNet", "residual_net"]


class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand; the residual add couples the expand conv with the shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = c_out // 2
        self.reduce = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()
        )
        self.conv = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.SiLU(),
        )
        self.expand = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.expand(self.conv(self.reduce(x))) + self.shortcut(x))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU()
        )
        self.stages = nn.Sequential(
            _Bottleneck(16, 32, 1), _Bottleneck(32, 64, 2), _Bottleneck(64, 128, 2)
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)
        )


def residual_net() -> nn.Module:
    """The benchmark model, deterministic in its seeds (see the module docstring)."""
    torch.manual_seed(0)
    model = ResidualNet()
    data = load_data("zoo:digits-32")
    assert data.train is not None and data.train.y is not None
    x, y = (
        data.train.x[:512],
        data.train.y[:512],
    )  # enough for batch-norm statistics and a ridge head
    model.requires_grad_(False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the pass
        model.train()
        model(x)
        model.eval()
        feats = []
        hook = model.head.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
        model(x)
        hook.remove()
        f = torch.cat([feats[0], torch.ones(len(x), 1)], dim=1).double()
        target = nn.functional.one_hot(y, 10).double() * 2 - 1
        sol = torch.linalg.solve(
            f.T @ f + 1e-2 * torch.eye(f.shape[1], dtype=torch.float64), f.T @ target
        )
        model.head.weight.copy_(sol[:-1].T.float())
        model.head.bias.copy_(sol[-1].float())
    return model.eval()
