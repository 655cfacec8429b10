"""Real-size image models for the live Prune page, the scans and the Ray tests: ResNet-18/50 and
MobileNetV2 at 224x224, in torchvision's layout (our own definitions: no torchvision, no download).

Weights are seeded random (PyTorch's default initialisation), batch-norm scales and shifts spread
as trained ones are, and batch-norm statistics estimated from batches of this module's images in
train mode, so every layer sees realistically normalised inputs and the logits differ from image
to image. The images (:func:`images`) are random but fixed (seeded): smooth colour fields with
edges and texture, so that the dense model does not answer one class for everything. They carry no
labels: accuracy is agreement with the dense model (what the product does with unlabelled data).

Each model name is a zero-argument ``PATH.py:FUNC`` entrypoint
(``tests/models/realsize.py:resnet18``);
``write_data(path, n)`` writes the matching ``.npz``. ``narrow_resnet`` is a ResNet-18 with an
eighth of the channels, at 224 px: small enough for the browser test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = 1000
SIZE = 224
__all__ = ["images", "mobilenet_v2", "narrow_resnet", "resnet18", "resnet50", "write_data"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class ResNet(nn.Module):
    """torchvision's ResNet: stem, four stages, global average pool, classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        width: int = 64,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, width, layers[0], 1)
        self.layer2 = self._stage(block, 2 * width, layers[1], 2)
        self.layer3 = self._stage(block, 4 * width, layers[2], 2)
        self.layer4 = self._stage(block, 8 * width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width * block.expansion, classes)

    def _stage(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int
    ) -> nn.Sequential:
        blocks = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0): inverted residuals with depthwise convolutions."""

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --- images and batch-norm statistics -------------------------------------------------------------


def images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """``n`` fixed random RGB images (float32, n x 3 x size x size, roughly zero-mean
    and unit-scale like ImageNet-normalised inputs): smooth
    colour fields plus a few edges and some fine texture, different in every image."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        img = np.zeros((3, size, size), dtype=np.float32)
        for _ in range(4):  # low-frequency colour waves
            fy, fx = rng.uniform(0.5, 6, 2)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
            img += rng.uniform(0.1, 0.4, (3, 1, 1)).astype(np.float32) * wave
        for _ in range(int(rng.integers(1, 4))):  # a few shapes with sharp edges
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
            img[:, mask] = rng.uniform(-1, 1, (3, 1)).astype(np.float32)
        img += rng.normal(0, rng.uniform(0.02, 0.3), img.shape).astype(np.float32)  # texture
        out[i] = img
    return out


def _calibrate(
    model: nn.Module, seed: int, size: int = SIZE, batches: int = 4, batch: int = 16
) -> nn.Module:
    """Batch-norm affine parameters spread as trained ones are, and running statistics estimated
    (cumulative average) from ``batches`` of images in train mode; then eval mode, no gradients."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for b in range(batches):
            model(torch.from_numpy(images(batch, seed=10_000 + 97 * seed + b, size=size)))
    model.requires_grad_(False)
    return model.eval()


def _build(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _calibrate(make(), seed)


def resnet18() -> nn.Module:
    """ResNet-18 (11.7 M parameters, 1.8 GMACs at 224 px): 20 convolutions and the classifier."""
    return _build(lambda: ResNet(BasicBlock, [2, 2, 2, 2]), seed=18)


def resnet50() -> nn.Module:
    """ResNet-50 (25.6 M parameters, 4.1 GMACs at 224 px): bottleneck blocks."""
    return _build(lambda: ResNet(Bottleneck, [3, 4, 6, 3]), seed=50)


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 (3.5 M parameters, 0.3 GMACs at 224 px): inverted residuals, depthwise convs."""
    return _build(MobileNetV2, seed=2)


def narrow_resnet() -> nn.Module:
    """A ResNet-18 with 8 channels in its first stage (instead of 64) and 10 classes, at 224 px."""
    return _build(lambda: ResNet(BasicBlock, [2, 2, 2, 2], width=8, classes=10), seed=8)


def write_data(path: str | Path, n: int = 256, seed: int = 1) -> Path:
    """``n`` images as an unlabelled ``.npz`` (array ``x`` only): accuracy is agreement with the
    dense model."""
    path = Path(path)
    np.savez(path, x=images(n, seed=seed))
    return path
