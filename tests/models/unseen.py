"""Models the project has never seen, as ``PATH.py:FUNC`` entrypoints, with their data.

Each ``FUNC`` takes no argument and returns a small ``nn.Module`` in eval mode, fitted in about a
second to generated data: seeded random weights, batch-norm statistics from the data, the linear
head solved by ridge regression (and a few Adam steps for the MLP). Fixed seeds: every load gives
the same model (up to float summation order across thread counts). ``make_data(name, n, seed)``
generates that model's data
(``x`` float32, ``y`` int64): the tests write it to ``.npz`` files, and so does running this file::

    python tests/models/unseen.py OUT_DIR     # writes OUT_DIR/NAME.npz and
    OUT_DIR/NAME-nolabels.npz

The five graphs and what they exercise in the core:

- ``residual_1d``: Conv1d ResNet on signals; residual adds couple channels (identity and projection
  shortcuts).
- ``mobilenet``: inverted residual blocks with depthwise convolutions (groups == channels): a
  depthwise conv's channels are coupled with the 1x1 conv that feeds it.
- ``inception``: parallel branches joined with ``torch.cat`` then DenseNet-style ``cat([x, f(x)])``,
  and an auxiliary head that only training mode calls.
- ``transformer``: ``nn.TransformerEncoder`` (self-attention, FFN, LayerNorm, residual adds) with a
  linear head; attention's embedding dimension cannot be removed, the FFN's hidden units can.
- ``tabular_mlp``: an MLP with BatchNorm1d and Dropout on tabular features.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "MODELS",
    "inception",
    "make_data",
    "mobilenet",
    "residual_1d",
    "tabular_mlp",
    "transformer",
]

TRAIN_SEED, TEST_SEED = 1, 2


# --- data ----------------------------------------------------------------------------------------


def _signals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2, 64) noisy sines; the class is the frequency of channel 0 (4 classes)."""
    y = rng.integers(0, 4, n)
    t = np.arange(64) / 64.0
    freq = (2 + 3 * y)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    ch0 = np.sin(2 * np.pi * freq * t + phase)
    ch1 = rng.normal(0, 1, (n, 64)) * 0.5  # a distractor channel
    x = np.stack([ch0, ch1], axis=1) + rng.normal(0, 0.3, (n, 2, 64))
    return x.astype(np.float32), y.astype(np.int64)


def _bars(n: int, rng: np.random.Generator, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, channels, 16, 16) noisy images of a line: horizontal, vertical, diagonal,
    anti-diagonal."""
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.3, (n, channels, 16, 16))
    idx = np.arange(16)
    for i in range(n):
        off = rng.integers(3, 13)
        img = np.zeros((16, 16))
        if y[i] == 0:
            img[off, :] = 1
        elif y[i] == 1:
            img[:, off] = 1
        elif y[i] == 2:
            img[idx, idx] = 1
        else:
            img[idx, 15 - idx] = 1
        x[i] += img * rng.uniform(0.8, 1.2, (channels, 1, 1))
    return x.astype(np.float32), y.astype(np.int64)


def _tokens(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 12) token features; the class is which of 3 marker features is largest on average."""
    x = rng.normal(0, 1, (n, 8, 12))
    y = rng.integers(0, 3, n)
    x[np.arange(n), :, y] += 0.8
    return x.astype(np.float32), y.astype(np.int64)


def _tabular(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 10) features on different scales; 3 classes from two thresholds."""
    x = rng.normal(0, 1, (n, 10)) * np.array([1, 1, 2, 2, 0.5, 1, 3, 1, 1, 0.1])
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] - x[:, 3] > 1.0).astype(np.int64)
    return x.astype(np.float32), y


_DATA: dict[str, Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "residual_1d": _signals,
    "mobilenet": lambda n, rng: _bars(n, rng, 3),
    "inception": lambda n, rng: _bars(n, rng, 1),
    "transformer": _tokens,
    "tabular_mlp": _tabular,
}


def make_data(name: str, n: int = 200, seed: int = TEST_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples ``(x, y)`` for model ``name``; deterministic in ``seed``."""
    return _DATA[name](n, np.random.default_rng(seed))


def _fitted(
    model: nn.Module, head: nn.Linear, name: str, steps: int = 0, n: int = 384
) -> nn.Module:
    """Make a seeded random ``model`` useful on its task, in well under a second on one core.

    ``steps`` Adam steps on all weights (0: none), then batch-norm statistics from one pass over
    the training data and the ``head`` solved by ridge regression on its input features (one-hot
    targets). Returns ``model`` in eval mode with gradients off.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention on a busy machine
    try:
        return _fit(model, head, name, steps, n)
    finally:
        torch.set_num_threads(threads)


def _fit(model: nn.Module, head: nn.Linear, name: str, steps: int, n: int) -> nn.Module:
    x_np, y_np = make_data(name, n, TRAIN_SEED)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    if steps:
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, n, (64,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.requires_grad_(False)
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the pass
                m.train()
        model(x)
        model.eval()
        feats.clear()
        model(x)
    hook.remove()
    f = torch.cat([feats[0], torch.ones(n, 1)], dim=1).double()
    target = nn.functional.one_hot(y, head.out_features).double() * 2 - 1
    sol = torch.linalg.solve(
        f.T @ f + 1e-2 * torch.eye(f.shape[1], dtype=torch.float64), f.T @ target
    )
    head.weight.copy_(sol[:-1].T.float())
    head.bias.copy_(sol[-1].float())
    return model.eval()


# --- (a) residual adds: a 1-D ResNet ----------------------------------------------------------


class _Block1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 5, stride=stride, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.proj = (
            nn.Conv1d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(out + (x if self.proj is None else self.proj(x)))


class Residual1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 16, 7, padding=3)
        self.blocks = nn.Sequential(_Block1d(16, 16, 1), _Block1d(16, 32, 2), _Block1d(32, 32, 1))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean(dim=2))


def residual_1d() -> nn.Module:
    torch.manual_seed(0)
    model = Residual1d()
    return _fitted(model, model.head, "residual_1d")


# --- (b) depthwise convolutions: MobileNetV2-like ---------------------------------------------


class _Inverted(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 3) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            _Inverted(16, 16, 1), _Inverted(16, 24, 2), _Inverted(24, 24, 1)
        )
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(24, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    model = MobileNetLike()
    return _fitted(model, model.classifier[1], "mobilenet")


# --- (c) concatenated branches: Inception block, then a DenseNet block -------------------------


class _Inception(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(c_in, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(c_in, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(c_in, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 5, padding=2))
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c_in, 6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(
            torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], dim=1)
        )  # 32 ch


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class InceptionDense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.inception = _Inception(16)
        self.aux = nn.Linear(32, 4)  # GoogLeNet-style auxiliary head: called in training mode only
        self.dense = nn.Sequential(_DenseLayer(32, 8), _DenseLayer(40, 8))  # 48 ch out
        self.fc = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mid = nn.functional.max_pool2d(self.inception(self.stem(x)), 2)
        out = self.fc(nn.functional.adaptive_avg_pool2d(self.dense(mid), 1).flatten(1))
        if self.training:
            return out, self.aux(mid.mean(dim=(2, 3)))
        return out


def inception() -> nn.Module:
    torch.manual_seed(0)
    model = InceptionDense()
    return _fitted(model, model.fc, "inception")


# --- (d) transformer encoder layers with a linear head ------------------------------------------


class TinyTransformer(nn.Module):
    def __init__(self, features: int = 12, d_model: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.pos = nn.Parameter(torch.randn(1, 8, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 8, features)
        return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))


def transformer() -> nn.Module:
    torch.manual_seed(0)
    model = TinyTransformer()
    return _fitted(model, model.head, "transformer")


# --- (e) an MLP on tabular data ---------------------------------------------------------------


class TabularMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(10, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tabular_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = TabularMLP()
    return _fitted(model, model.net[6], "tabular_mlp", steps=200)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "residual_1d": residual_1d,
    "mobilenet": mobilenet,
    "inception": inception,
    "transformer": transformer,
    "tabular_mlp": tabular_mlp,
}


def write_npz(name: str, out_dir: str | Path, labels: bool = True, n: int = 200) -> Path:
    """Write model ``name``'s test data to ``out_dir/NAME.npz`` (``NAME-nolabels.npz`` without
    y)."""
    x, y = make_data(name, n)
    path = Path(out_dir) / (f"{name}.npz" if labels else f"{name}-nolabels.npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels:
        np.savez(path, x=x, y=y)
    else:
        np.savez(path, x=x)
    return path


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    for model_name in MODELS:
        for with_labels in (True, False):
            sys.stdout.write(f"{write_npz(model_name, out, with_labels)}\n")
