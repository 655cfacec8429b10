"""A fresh, untrained initialisation of a model's architecture, for schedules that train from
scratch (pruning at initialisation, lottery tickets).

Zoo models are built untrained (``zoo.build(name, pretrained=False, seed=...)``). A user's module
is deep-copied and every submodule that holds parameters of its own is re-initialised with its
``reset_parameters()`` (what PyTorch's layers call in their constructor). Where a module holds
parameters but has no ``reset_parameters`` (a hand-written layer, a ``torch.export`` program whose
weights are attributes of the graph), re-initialising is impossible here and the error names it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from explorer.errors import ScheduleError

__all__ = ["fresh_model", "not_reinitialisable"]


def _own_parameters(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters(recurse=False)]


def not_reinitialisable(model: nn.Module) -> list[str]:
    """Modules of ``model`` that hold parameters but cannot re-initialise them (``[]``: all can).

    Each entry reads ``"name (Type: param, ...)"``; the root module is named ``<model>``.
    """
    bad = []
    for name, module in model.named_modules():
        own = _own_parameters(module)
        if own and not callable(getattr(module, "reset_parameters", None)):
            bad.append(f"{name or '<model>'} ({type(module).__name__}: {', '.join(own)})")
    return bad


def fresh_model(model: nn.Module, spec: str, seed: int = 0) -> nn.Module:
    """An untrained model of the same architecture as ``model``, initialised from ``seed``.

    The same ``seed`` gives the same initial weights; the caller's random state is not changed.
    ``model`` is not modified. The result is in eval mode with gradients off, like a loaded model.

    Raises:
        ScheduleError: the architecture cannot be re-initialised (``not_reinitialisable``).
    """
    if spec.startswith("zoo:"):
        from explorer.models.zoo import ZOO, build

        name = spec[4:]
        if name in ZOO:
            fresh = build(name, pretrained=False, seed=seed)
            if hasattr(model, "input_shape"):
                fresh.input_shape = model.input_shape  # type: ignore[assignment]
            return fresh.requires_grad_(False).eval()
    bad = not_reinitialisable(model)
    if bad:
        shown = "; ".join(bad[:4]) + ("; ..." if len(bad) > 4 else "")
        raise ScheduleError(
            f"{spec}: cannot re-initialise the model to train it from scratch: {shown} "
            "hold(s) parameters without a reset_parameters() method; give the model as "
            "PATH.py:FUNC built from torch.nn layers, or use a schedule that starts from "
            "the trained weights (one-shot, iterative, gradual, regularized)"
        )
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if _own_parameters(module):
                module.reset_parameters()  # type: ignore[operator]
            elif isinstance(module, nn.modules.batchnorm._NormBase):
                module.reset_running_stats()
    return fresh.requires_grad_(False).eval()
