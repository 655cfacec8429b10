"""Built-in models: small, trained on data that ships offline, weights shipped in ``weights/``.

scikit-learn's 8x8 digits (``digits-*``), 5,000 real MNIST digits (``mnist-*``: LeNet-300-100 and
the Caffe LeNet-5 of Han et al. 2015) and MNIST-1D (``mnist1d-*``: the MLP of its lottery-ticket
notebook and the CNN of its README). The first launch trains nothing: ``build(name)`` loads the
shipped state dict with ``weights_only=True``. ``python -m explorer.models.train`` re-creates the
weights; ``build(name, pretrained=False, seed=s)`` gives the untrained architecture, initialised
reproducibly (what schedules that train from scratch start from).
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
            *_conv_bn(32, 64),
            nn.MaxPool2d(2),  # 16x16
            *_conv_bn(64, 128),
            nn.MaxPool2d(2),  # 8x8
            *_conv_bn(128, 256),
        )
        self.classifier = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        )


class BasicBlock(nn.Module):
    """ResNet basic block; the residual add couples the channels of conv2, the shortcut and the
    input."""

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
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.layer1 = nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32))
        self.layer2 = nn.Sequential(BasicBlock(32, 64, stride=2), BasicBlock(64, 64))
        self.layer3 = nn.Sequential(BasicBlock(64, 128, stride=2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; Han et al. 2015, Table 2): 784-300-100-10, ReLU, 267K
    weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """The Caffe LeNet-5 that Han et al. 2015 prune (Table 3): conv 5x5 20, max-pool, conv 5x5 50,
    max-pool, fc 500 (ReLU), fc 10; 431K weights. As in Caffe's prototxt, the convolutions have no
    ReLU (the max-pools are the non-linearity between them)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)  # 28 -> 24, pooled to 12
        self.conv2 = nn.Conv2d(20, 50, 5)  # 12 -> 8, pooled to 4
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class Mnist1dMLP(nn.Module):
    """The MLP of MNIST-1D's lottery-ticket notebook: 40-500-500-10, the second hidden layer
    residual
    (``h = h + relu(linear2(h))``), so linear1 and linear2 share their output channels."""

    def __init__(self, hidden: int = 500) -> None:
        super().__init__()
        self.linear1 = nn.Linear(40, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear1(x))
        h = h + torch.relu(self.linear2(h))
        return self.linear3(h)


class Mnist1dCNN(nn.Module):
    """The CNN of MNIST-1D's README (its ``ConvBase``): three 1-D convolutions of 25 channels
    (kernel 5 then 3, stride 2), ReLU, a linear classifier on the flattened 25x5 features. Takes
    the 40-sample signal as it comes (N x 40) and adds the channel axis itself."""

    def __init__(self, channels: int = 25) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)  # 40 -> 19
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)  # 19 -> 10
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)  # 10 -> 5
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.unsqueeze(1)))
        h = torch.relu(self.conv3(torch.relu(self.conv2(h))))
        return self.linear(torch.flatten(h, 1))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    factory: Callable[[], nn.Module]
    data: str  # name in explorer.data.zoo_datasets()


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "digits-mlp", "MLP 64-256-128-10 on flattened 8x8 digits", DigitsMLP, "digits-flat"
        ),
        ZooEntry(
            "digits-cnn", "4 conv+BN layers (32-64-128-256) on 32x32 digits", DigitsCNN, "digits-32"
        ),
        ZooEntry(
            "digits-resnet",
            "ResNet with 5 basic blocks (residual adds couple channels) on 32x32 digits",
            DigitsResNet,
            "digits-32",
        ),
        ZooEntry(
            "mnist-lenet300",
            "LeNet-300-100 (784-300-100-10) on 5,000 real MNIST digits, flattened",
            LeNet300,
            "mnist-flat",
        ),
        ZooEntry(
            "mnist-lenet5",
            "Caffe LeNet-5 (conv 20, conv 50, fc 500, fc 10; 431K) on real MNIST 28x28",
            LeNet5,
            "mnist-28",
        ),
        ZooEntry(
            "mnist1d-mlp",
            "MLP 40-500-500(residual)-10 on MNIST-1D (the lottery-ticket notebook's)",
            Mnist1dMLP,
            "mnist1d",
        ),
        ZooEntry(
            "mnist1d-cnn",
            "3 Conv1d layers (25 channels) + linear on MNIST-1D (its README's CNN)",
            Mnist1dCNN,
            "mnist1d",
        ),
    ]
}


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def build(name: str, *, pretrained: bool = True, seed: int | None = None) -> nn.Module:
    """Build a zoo model in eval mode, with its shipped weights unless ``pretrained=False``.

    ``seed`` (untrained models): initialise under ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng``, so the same seed gives the same initial weights and the caller's
    random state is left as it was.
    """
    if seed is None or pretrained:
        model = ZOO[name].factory()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ZOO[name].factory()
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
