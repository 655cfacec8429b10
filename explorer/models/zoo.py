"""Built-in models: small, trained on scikit-learn's digits, weights shipped in ``weights/``.

The first launch trains nothing: ``build(name)`` loads the shipped state dict with
``weights_only=True``. ``python -m explorer.models.train`` re-creates the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["ZOO", "ZooEntry", "build", "weights_path"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(x))


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitsCNN(nn.Module):
    """VGG-style: features (conv, BN, ReLU; two max-pools), global average pool, linear classifier.

    Widths chosen so that dense ORT latency at batch 1 on one thread is well above 0.3 ms and the
    convolutions dominate it: removing channels then shows up as a real speedup.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, 32),
            *_conv_bn(32, 64), nn.MaxPool2d(2),  # 16x16
            *_conv_bn(64, 128), nn.MaxPool2d(2),  # 8x8
            *_conv_bn(128, 256),
        )
        self.classifier = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; the residual add couples the channels of conv2, the shortcut and the input."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32))
        self.layer2 = nn.Sequential(BasicBlock(32, 64, stride=2), BasicBlock(64, 64))
        self.layer3 = nn.Sequential(BasicBlock(64, 128, stride=2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    factory: Callable[[], nn.Module]
    data: str  # name in explorer.data.zoo_datasets()


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("digits-mlp", "MLP 64-256-128-10 on flattened 8x8 digits", DigitsMLP, "digits-flat"),
        ZooEntry("digits-cnn", "4 conv+BN layers (32-64-128-256) on 32x32 digits", DigitsCNN, "digits-32"),
        ZooEntry("digits-resnet", "ResNet with 5 basic blocks (residual adds couple channels) on 32x32 digits",
                 DigitsResNet, "digits-32"),
    ]
}


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def build(name: str, *, pretrained: bool = True) -> nn.Module:
    """Build a zoo model in eval mode, with its shipped weights unless ``pretrained=False``."""
    model = ZOO[name].factory()
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
