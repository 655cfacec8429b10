"""A MobileNetV2 (Sandler et al. 2018, torchvision's layout) at 96 x 96 px, for latency work.

``mobilenet_v2()`` (a ``PATH.py:FUNC`` model spec) builds it with seeded random weights and
batch-norm statistics set from its own data, so that activations keep a sane scale through the 17
inverted residual blocks; ``data()`` (a ``PATH.py:FUNC`` data spec) returns that data: seeded
random images with random labels. Accuracy means nothing here (chance); what this model is for
is the channel structure of mobile networks: 1x1 expansions, depthwise 3x3 convolutions (groups
== channels, coupled with the expansion that feeds them), linear bottlenecks coupled through
residual adds, and channel counts (16, 24, 32, 96, 144, 192, 384, 576, 960, 1280) that dense CPU
kernels like.
Removing 30% of those channels gives counts such as 23 or 67, which ONNX Runtime's blocked
(NCHWc) convolutions cannot use.

    pruning-explorer evaluate --model tests/models/mobilenet_v2.py:mobilenet_v2 \
        --data tests/models/mobilenet_v2.py:data --plan plan.json
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SIZE", "MobileNetV2", "data", "mobilenet_v2"]

SIZE = 96  # input height and width
CLASSES = 10
# (expansion t, output channels c, repeats n, first stride s): the paper's table 2.
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion, depthwise 3x3, linear 1x1 projection; a residual add where shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(c_in, hidden, 1))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, c_out, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = CLASSES, width: float = 1.0) -> None:
        super().__init__()
        c_in = int(32 * width)
        blocks: list[nn.Module] = [_conv_bn(3, c_in, 3, 2)]
        for t, c, n, s in SETTINGS:
            c_out = int(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        blocks.append(_conv_bn(c_in, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        )


def data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded random 3 x 96 x 96 images and labels (the model's evaluation data: few, since
    accuracy means nothing here and every sensitivity point evaluates all of them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def mobilenet_v2() -> nn.Module:
    """The model, deterministic in its seeds, batch-norm statistics from :func:`data`, in eval "
    "mode."""
    torch.manual_seed(0)
    model = MobileNetV2()
    x, _ = data(64, seed=1)
    model.requires_grad_(False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the pass
        model.train()
        model(x)
    return model.eval()
