"""A user's ONNX file with ops our interpreter does not run, and its data.

``write(out_dir)`` trains a small CNN on scikit-learn's digits (a few seconds, seed 0) and writes
``digits-ort.onnx`` and ``digits-ort.npz`` (``x`` float32 (N, 1, 8, 8), ``y`` int64; the test
fifth of the set). Its graph holds, besides Conv, Gemm and Relu:

- ``InstanceNormalization`` (``nn.InstanceNorm2d``) and ``Resize`` (``nn.Upsample``, with an
  absent optional input in the middle): default-domain ops outside ``supported_ops()``;
- ``com.microsoft.Gelu``: a contrib op of ONNX Runtime, the way a user's custom export emits one.

So the file exercises the path where those nodes run in ONNX Runtime. Running this file writes
the two files::

    python tests/models/ort_graph.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODEL_NAME", "OPS", "build", "write"]

MODEL_NAME = "digits-ort"
OPS = ("InstanceNormalization", "Resize", "com.microsoft.Gelu")


class _MsGelu(torch.autograd.Function):
    """GELU, exported as ONNX Runtime's ``com.microsoft::Gelu`` node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            return torch.autograd.grad(F.gelu(leaf), leaf, grad)[0]

    @staticmethod
    def symbolic(g, x):  # noqa: ANN001, ANN205
        return g.op("com.microsoft::Gelu", x)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.norm = nn.InstanceNorm2d(16, affine=True)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.up = nn.Upsample(scale_factor=2, mode="nearest")  # 4x4 -> 8x8
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.fc1 = nn.Linear(32 * 16, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(self.up(x)))
        x = _MsGelu.apply(self.fc1(x.flatten(1)))
        return self.fc2(x)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


def build(epochs: int = 12, seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """The trained model and its test split (x, y)."""
    x, y = _digits()
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[: len(x) // 5], order[len(x) // 5 :]
    torch.manual_seed(seed)
    model = _Net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval(), x[test], y[test]


def write(out_dir: str | Path) -> tuple[Path, Path]:
    """Train and write ``digits-ort.onnx`` and ``digits-ort.npz`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, x, y = build()
    onnx_path, npz_path = out / f"{MODEL_NAME}.onnx", out / f"{MODEL_NAME}.npz"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.from_numpy(x[:1]),),
            str(onnx_path),
            dynamo=False,
            opset_version=17,
            input_names=["pixels"],
            output_names=["logits"],
            custom_opsets={"com.microsoft": 1},
            dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}},
        )
    np.savez(npz_path, x=x, y=y)
    return onnx_path, npz_path


if __name__ == "__main__":
    for written in write(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(written)
