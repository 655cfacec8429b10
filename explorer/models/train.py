"""Training recipe of the zoo: ``python -m explorer.models.train [NAME ...]``.

Adam with a cosine schedule, small random shifts as augmentation for the image models, the
checkpoint with the best validation accuracy kept. Writes ``weights/NAME.pt`` (a plain state dict)
and prints validation and test accuracy.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from explorer.data import Split, load_data
from explorer.models.zoo import ZOO, build, weights_path

EPOCHS = {"digits-mlp": 60, "digits-cnn": 30, "digits-resnet": 30}


def _shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translation of each image by up to ``max_px`` pixels (zero fill)."""
    if x.ndim != 4:
        return x
    n = x.shape[0]
    dx, dy = (torch.randint(-max_px, max_px + 1, (2, n), generator=g)).tolist()
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(n):
        sx, sy = dx[i], dy[i]
        out[i, :, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)] = x[
            i, :, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)
        ]
    return out


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    assert split.y is not None
    return float((model(split.x).argmax(1) == split.y).float().mean())


def train(name: str, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = load_data(f"zoo:{name}")
    assert data.train is not None and data.val is not None and data.train.y is not None
    model = build(name, pretrained=False)
    epochs = EPOCHS[name]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    best, best_state = -1.0, None
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(data.train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(_shift(data.train.x[idx], g)), data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        val = accuracy(model, data.val)
        if val >= best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"{name} epoch {epoch + 1}/{epochs} val {val:.4f}", file=sys.stderr)
    assert best_state is not None
    model.load_state_dict(best_state)
    torch.save(best_state, weights_path(name))
    return best, accuracy(model, data.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=sorted(ZOO))
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.names:
        val, test = train(name)
        print(f"{name}: val {val:.4f} test {test:.4f}")


if __name__ == "__main__":
    main()
