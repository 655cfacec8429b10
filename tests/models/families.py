"""Replicas of torchvision's architecture families that Hugging Face ``transformers`` does not have.

torchvision cannot be installed here (its wheel pulls CUDA), so these follow its code: the same
module structure and the same qualified names (``features.3.expand3x3``, ``trunk_output.block1.
block1-0.f.b.0``, ``encoder.layers.encoder_layer_0.self_attention``), the same ops in the same
order (channel shuffle by view/transpose, dense layers concatenating a list of tensors, squeeze-
excitation multiplying its input, hardswish/hardsigmoid, nn.MultiheadAttention). Each builder
takes the widths and depths, so the tests build them small and ``benchmarks/architectures.py``
at torchvision's sizes (``REAL`` below). Weights are random; ``tests/models/architectures.py``
sets realistic batch-norm statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["REAL", "SMALL", "build_family"]


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's rounding of channel counts to a multiple of ``divisor``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: conv, batch norm, activation (``0``, ``1``, ``2``)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
        dilation: int = 1,
        eps: float = 1e-5,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False
            ),
            nn.BatchNorm2d(c_out, eps=eps),
        ]
        if activation is not None:
            layers.append(
                activation(inplace=True)
                if activation in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)
                else activation()
            )
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: pool, fc1 (1x1 conv), activation, fc2, ``scale * x``."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        activation: Callable[..., nn.Module] = nn.ReLU,
        scale_activation: Callable[..., nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


# --- SqueezeNet 1.1: fire modules ---------------------------------------------------------------


class Fire(nn.Module):
    def __init__(self, c_in: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1; ``fires``: (squeeze, expand) per fire module, ``None`` a max pool."""

    def __init__(self, stem: int, fires: Sequence[tuple[int, int] | None], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        c = stem
        for fire in fires:
            if fire is None:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                layers.append(Fire(c, fire[0], fire[1], fire[1]))
                c = 2 * fire[1]
        self.features = nn.Sequential(*layers)
        # The classifier is a 1x1 conv whose output channels are the classes.
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(c, classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                if m is self.classifier[1]:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# --- DenseNet: dense concatenation ---------------------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:  # torchvision's list of features
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(c_in + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    def __init__(
        self, growth: int, blocks: Sequence[int], init: int, bn_size: int, classes: int
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, init, 7, stride=2, padding=3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, padding=1))
        c = init
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, (1, 1)), 1))


# --- ShuffleNetV2: channel split and shuffle -----------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = c_out // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        c2 = c_in if stride > 1 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(c2, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats: Sequence[int], channels: Sequence[int], classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = channels[0]
        for i, (n, c_out) in enumerate(zip(repeats, channels[1:], strict=False)):
            units = [ShuffleUnit(c, c_out, 2)] + [
                ShuffleUnit(c_out, c_out, 1) for _ in range(n - 1)
            ]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            c = c_out
        self.conv5 = nn.Sequential(
            nn.Conv2d(c, channels[-1], 1, bias=False),
            nn.BatchNorm2d(channels[-1]),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(channels[-1], classes)
        self.stages = len(repeats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for i in range(self.stages):
            x = getattr(self, f"stage{i + 2}")(x)
        return self.fc(self.conv5(x).mean([2, 3]))


# --- MobileNetV3: squeeze-excitation, hardswish ---------------------------------------------------


class _V3Block(nn.Module):
    """torchvision's MobileNetV3 InvertedResidual: expand, depthwise, SE (hardsigmoid), project."""

    def __init__(
        self, c_in: int, kernel: int, expanded: int, c_out: int, se: bool, hs: bool, stride: int
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvNormActivation(c_in, expanded, 1, activation=act, eps=0.001))
        layers.append(
            ConvNormActivation(
                expanded, expanded, kernel, stride, groups=expanded, activation=act, eps=0.001
            )
        )
        if se:
            layers.append(
                SqueezeExcitation(
                    expanded, _make_divisible(expanded // 4, 8), scale_activation=nn.Hardsigmoid
                )
            )
        layers.append(ConvNormActivation(expanded, c_out, 1, activation=None, eps=0.001))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """``blocks``: (c_in, kernel, expanded, c_out, se, hardswish, stride) as torchvision's table."""

    def __init__(
        self, blocks: Sequence[tuple], last: int, classes: int, width: float = 1.0
    ) -> None:
        super().__init__()
        adj = lambda c: _make_divisible(c * width, 8)  # noqa: E731
        first = adj(blocks[0][0])
        layers: list[nn.Module] = [
            ConvNormActivation(3, first, 3, 2, activation=nn.Hardswish, eps=0.001)
        ]
        for c_in, k, exp, c_out, se, hs, s in blocks:
            layers.append(_V3Block(adj(c_in), k, adj(exp), adj(c_out), se, hs, s))
        last_in = adj(blocks[-1][3])
        layers.append(
            ConvNormActivation(last_in, 6 * last_in, 1, activation=nn.Hardswish, eps=0.001)
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2, inplace=True),
            nn.Linear(last, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- MNASNet --------------------------------------------------------------------------------------


class _MnasResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = c_in * expansion
        self.apply_residual = c_in == c_out and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False),
            nn.BatchNorm2d(mid, momentum=0.0003),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel, padding=kernel // 2, stride=stride, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=0.0003),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, momentum=0.0003),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + x if self.apply_residual else self.layers(x)


class MNASNet(nn.Module):
    """``stacks``: (c_out, kernel, stride, expansion, repeats) after the stem, as torchvision's."""

    def __init__(
        self,
        stem: int,
        sep: int,
        stacks: Sequence[tuple[int, int, int, int, int]],
        last: int,
        classes: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(stem, momentum=0.0003),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, stem, 3, padding=1, stride=1, groups=stem, bias=False),
            nn.BatchNorm2d(stem, momentum=0.0003),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, sep, 1, bias=False),
            nn.BatchNorm2d(sep, momentum=0.0003),
        ]
        c = sep
        for c_out, k, s, e, n in stacks:
            units = [_MnasResidual(c, c_out, k, s, e)] + [
                _MnasResidual(c_out, c_out, k, 1, e) for _ in range(n - 1)
            ]
            layers.append(nn.Sequential(*units))
            c = c_out
        layers += [
            nn.Conv2d(c, last, 1, bias=False),
            nn.BatchNorm2d(last, momentum=0.0003),
            nn.ReLU(inplace=True),
        ]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(x).mean([2, 3]))


# --- Inception v3: parallel branches --------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool: int, w: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 4 * w, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 3 * w, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(3 * w, 4 * w, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 4 * w, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(4 * w, 6 * w, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(6 * w, 6 * w, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool, kernel_size=1)
        self.out = 14 * w + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(nn.functional.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction: two conv branches and a max-pool branch that passes the input's channels."""

    def __init__(self, c_in: int, w: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 24 * w, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 4 * w, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(4 * w, 6 * w, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(6 * w, 6 * w, kernel_size=3, stride=2)
        self.out = 30 * w + c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = nn.functional.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """Factorised 1x7 / 7x1 convolutions."""

    def __init__(self, c_in: int, c7: int, w: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 12 * w, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 12 * w, kernel_size=(7, 1), padding=(3, 0))
        self.branch_pool = BasicConv2d(c_in, 12 * w, kernel_size=1)
        self.out = 36 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bp = self.branch_pool(nn.functional.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bp], 1)


class Inception(nn.Module):
    """An Inception v3 trunk: stem, InceptionA x ``a``, InceptionB, InceptionC x ``c``, pool, fc."""

    def __init__(self, w: int, a: int, c: int, classes: int) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 2 * w, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(2 * w, 2 * w, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(2 * w, 4 * w, kernel_size=3, padding=1)
        ch = 4 * w
        blocks: list[tuple[str, nn.Module]] = []
        for i in range(a):
            block = InceptionA(ch, 2 * w if i == 0 else 4 * w, w)
            blocks.append((f"Mixed_5{'bcd'[i]}", block))
            ch = block.out
        reduction = InceptionB(ch, w)
        blocks.append(("Mixed_6a", reduction))
        ch = reduction.out
        for i in range(c):
            block = InceptionC(ch, 8 * w, w)
            blocks.append((f"Mixed_6{'bcde'[i]}", block))
            ch = block.out
        for name, block in blocks:
            setattr(self, name, block)
        self.blocks = [name for name, _ in blocks]
        self.fc = nn.Linear(ch, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = nn.functional.max_pool2d(x, kernel_size=3, stride=2)
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# --- RegNet (torchvision's): grouped convolutions, weight names with '-' -------------------------


class _BottleneckTransform(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, stride: int, group_width: int, se_ratio: float
    ) -> None:
        super().__init__()
        groups = c_out // group_width
        self.a = ConvNormActivation(c_in, c_out, 1)
        self.b = ConvNormActivation(c_out, c_out, 3, stride, groups=groups)
        if se_ratio:
            self.se = SqueezeExcitation(c_out, int(round(se_ratio * c_in)))
        self.c = ConvNormActivation(c_out, c_out, 1, activation=None)


class _ResBottleneckBlock(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, stride: int, group_width: int, se_ratio: float
    ) -> None:
        super().__init__()
        self.proj = (
            ConvNormActivation(c_in, c_out, 1, stride, activation=None)
            if c_in != c_out or stride != 1
            else None
        )
        self.f = _BottleneckTransform(c_in, c_out, stride, group_width, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNet(nn.Module):
    """RegNetY (``se_ratio`` 0.25) or RegNetX (0); ``stages``: (width, depth) with group width."""

    def __init__(
        self,
        stem: int,
        stages: Sequence[tuple[int, int]],
        group_width: int,
        se_ratio: float,
        classes: int,
    ) -> None:
        super().__init__()
        self.stem = ConvNormActivation(3, stem, 3, 2)
        trunk = []
        c = stem
        for i, (width, depth) in enumerate(stages):
            stage = nn.Sequential()
            for j in range(depth):
                stage.add_module(
                    f"block{i + 1}-{j}",  # torchvision's names: a '-' in every weight name
                    _ResBottleneckBlock(
                        c if j == 0 else width,
                        width,
                        2 if j == 0 else 1,
                        min(group_width, width),
                        se_ratio,
                    ),
                )
            trunk.append((f"block{i + 1}", stage))
            c = width
        self.trunk_output = nn.Sequential()
        for name, stage in trunk:
            self.trunk_output.add_module(name, stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


# --- ViT (torchvision's): nn.MultiheadAttention ---------------------------------------------------


class _MLPBlock(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(hidden, dim),
            nn.Dropout(0.0),
        )


class _EncoderBlock(nn.Module):
    def __init__(self, heads: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _MLPBlock(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = self.dropout(y) + x
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    def __init__(
        self, image: int, patch: int, layers: int, heads: int, dim: int, hidden: int, classes: int
    ) -> None:
        super().__init__()
        self.patch_size, self.hidden_dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        seq = (image // patch) ** 2 + 1
        self.encoder = nn.Module()
        self.encoder.pos_embedding = nn.Parameter(torch.empty(1, seq, dim).normal_(std=0.02))
        self.encoder.dropout = nn.Dropout(0.0)
        self.encoder.layers = nn.Sequential()
        for i in range(layers):
            self.encoder.layers.add_module(f"encoder_layer_{i}", _EncoderBlock(heads, dim, hidden))
        self.encoder.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x)  # (n, dim, h/p, w/p)
        x = x.reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        enc = self.encoder
        x = enc.ln(enc.layers(enc.dropout(x + enc.pos_embedding)))
        return self.heads(x[:, 0])


# --- the table ------------------------------------------------------------------------------------

# torchvision's mobilenet_v3_small: c_in, kernel, expanded, c_out, SE, hardswish, stride
_V3_SMALL = [
    (16, 3, 16, 16, True, False, 2),
    (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1),
    (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
]
_MNAS_1_0 = [
    (24, 3, 2, 3, 3),
    (40, 5, 2, 3, 3),
    (80, 5, 2, 6, 3),
    (96, 3, 1, 6, 2),
    (192, 5, 2, 6, 4),
    (320, 3, 1, 6, 1),
]
_SQUEEZE_1_1 = [
    (16, 64),
    (16, 64),
    None,
    (32, 128),
    (32, 128),
    None,
    (48, 192),
    (48, 192),
    (64, 256),
    (64, 256),
]

# Small enough for the test matrix (32x32 inputs, a few layers), the same structure.
SMALL: dict[str, Callable[[int], nn.Module]] = {
    "squeezenet": lambda k: SqueezeNet(16, [(4, 8), (4, 8), None, (8, 16)], k),
    "densenet": lambda k: DenseNet(growth=8, blocks=(2, 2), init=16, bn_size=2, classes=k),
    "shufflenet_v2": lambda k: ShuffleNetV2((2, 2), (8, 16, 32, 64), k),
    "mobilenet_v3": lambda k: MobileNetV3(
        [_V3_SMALL[i] for i in (0, 1, 2, 3, 4)], 64, k, width=0.5
    ),
    "mnasnet": lambda k: MNASNet(8, 8, [(16, 3, 2, 3, 2), (24, 5, 2, 3, 1)], 64, k),
    "inception": lambda k: Inception(2, 1, 1, k),
    "regnet_tv": lambda k: RegNet(16, [(16, 1), (32, 2)], 8, 0.25, k),
    "vit_tv": lambda k: VisionTransformer(32, 8, 2, 4, 32, 64, k),
}

# torchvision's sizes (SqueezeNet 1.1, DenseNet-121, ShuffleNetV2 x1.0, MobileNetV3-Small, MNASNet
# 1.0, an Inception v3 trunk, RegNetY-400MF, ViT-B/16), for the benchmark at 224 px.
REAL: dict[str, Callable[[int], nn.Module]] = {
    "squeezenet": lambda k: SqueezeNet(64, _SQUEEZE_1_1, k),
    "densenet": lambda k: DenseNet(
        growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, classes=k
    ),
    "shufflenet_v2": lambda k: ShuffleNetV2((4, 8, 4), (24, 116, 232, 464, 1024), k),
    "mobilenet_v3": lambda k: MobileNetV3(_V3_SMALL, 1024, k),
    "mnasnet": lambda k: MNASNet(32, 16, _MNAS_1_0, 1280, k),
    "inception": lambda k: Inception(16, 3, 4, k),
    "regnet_tv": lambda k: RegNet(32, [(48, 1), (104, 3), (208, 6), (440, 6)], 8, 0.25, k),
    "vit_tv": lambda k: VisionTransformer(224, 16, 12, 12, 768, 3072, k),
}


def build_family(name: str, classes: int, real: bool = False) -> nn.Module:
    """A randomly initialised replica (``SMALL`` or ``REAL`` sizes) with ``classes`` outputs."""
    return (REAL if real else SMALL)[name](classes)
