"""Training recipe of the zoo: ``python -m explorer.models.train [NAME ...]``.

Adam; the checkpoint with the best validation accuracy kept. Writes ``weights/NAME.pt`` (a plain
state dict) and prints validation and test accuracy. Two kinds of recipe:

- by epochs (the digits and MNIST models): a cosine schedule, shuffled batches, small random
  shifts as augmentation for the image models, validation after every epoch;
- by steps (the MNIST-1D models, as MNIST-1D's own ``train.py``): a constant learning rate, batches
  taken in order from the (already shuffled) training split, validation every ``eval_every`` steps.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn

from explorer.data import Split, load_data
from explorer.models.zoo import ZOO, build, weights_path


@dataclass(frozen=True)
class Recipe:
    epochs: int | None = None  # by epochs: cosine over them, validation after each
    steps: int | None = None  # by steps: constant rate, validation every ``eval_every`` steps
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    shift: bool = True  # random shifts of up to 2 pixels (image inputs only)
    eval_every: int = 100


RECIPES = {
    "digits-mlp": Recipe(epochs=60),
    "digits-cnn": Recipe(epochs=30),
    "digits-resnet": Recipe(epochs=30),
    "mnist-lenet300": Recipe(epochs=40),
    "mnist-lenet5": Recipe(epochs=30),
    # The lottery-ticket notebook's MLP: 1501 steps of 100 at lr 0.02, no weight decay.
    "mnist1d-mlp": Recipe(steps=1501, lr=2e-2, weight_decay=0.0, batch_size=100, eval_every=100),
    # MNIST-1D's train.py defaults (lr 0.01, batch 100, 8000 steps), which its README's CNN used.
    "mnist1d-cnn": Recipe(steps=8000, lr=1e-2, weight_decay=0.0, batch_size=100, eval_every=250),
}


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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(name: str, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = load_data(f"zoo:{name}")
    assert data.train is not None and data.val is not None and data.train.y is not None
    model = build(name, pretrained=False)
    recipe = RECIPES[name]
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    best, best_state = -1.0, None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        loss = nn.functional.cross_entropy(model(_shift(x, g) if recipe.shift else x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def validate(where: str) -> None:
        nonlocal best, best_state
        val = accuracy(model, data.val)
        if val >= best:
            best, best_state = val, _snapshot(model)
        print(f"{name} {where} val {val:.4f}", file=sys.stderr)

    if recipe.epochs is not None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.epochs)
        for epoch in range(recipe.epochs):
            perm = torch.randperm(len(data.train), generator=g)
            for i in range(0, len(perm), recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                step(data.train.x[idx], data.train.y[idx])
            sched.step()
            validate(f"epoch {epoch + 1}/{recipe.epochs}")
    else:
        assert recipe.steps is not None
        n = len(data.train)
        for t in range(recipe.steps):
            start = (t * recipe.batch_size) % n
            step(
                data.train.x[start : start + recipe.batch_size],
                data.train.y[start : start + recipe.batch_size],
            )
            if t % recipe.eval_every == 0 or t == recipe.steps - 1:
                validate(f"step {t + 1}/{recipe.steps}")
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
