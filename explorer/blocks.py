"""Whole blocks removed: a residual block (or a transformer layer) becomes the identity.

A *block* is a module whose output has its input's shape and adds its input to what it computes: a
residual connection whose shortcut is the identity (a ResNet basic or bottleneck block without
downsampling, MobileNetV2's inverted residual with its skip, EfficientNet's MBConv, a ConvNeXt
block, a ViT or BERT layer). Removing it leaves ``y = x``: the network loses that depth and every
layer inside it, and the shortcut carries the signal on (Veit et al. 2016, "Residual networks
behave like ensembles of relatively shallow networks"; Fan et al. 2019, LayerDrop).

Blocks are found by running the model once on the example input: every module records the tensor
it was called with, and an addition one of whose operands *is* that tensor (the same object, so a
copy or a projection does not count) marks the module as residual. A sequence of several blocks
(a ResNet stage) is no block itself: its blocks are. Graphs loaded from a ``.pt2`` or an ``.onnx``
file are flat (no module stands for a block), so they have none; :func:`why_no_blocks` says so.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from explorer.errors import PlanError
from explorer.inputs import Inputs, run_model
from explorer.inspect import PRUNABLE_TYPES

__all__ = ["Block", "Skipped", "check_blocks", "find_blocks", "remove_blocks", "why_no_blocks"]

_ADDS = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__"})


@dataclass(frozen=True)
class Block:
    """A removable block: its module name and type, and the prunable layers that go with it."""

    name: str
    type: str
    layers: tuple[str, ...]
    params: int  # every parameter of the module

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "layers": list(self.layers),
            "params": self.params,
        }


class Skipped(nn.Module):
    """A removed block: it returns the tensor it is given (the identity), whatever else comes."""

    def __init__(self, removed: str) -> None:
        super().__init__()
        self.removed = removed  # the type of the block it replaces

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _first_tensor(args, kwargs)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"removed {self.removed}: identity"


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class _Residuals(TorchFunctionMode):
    """Marks every module on the call stack one of whose additions reads the module's input."""

    def __init__(self, stack: list[tuple[str, torch.Tensor]], found: set[str]) -> None:
        super().__init__()
        self.stack = stack
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if self.stack and getattr(func, "__name__", "") in _ADDS:
            operands = [*args[:2], kwargs.get("other")]
            for name, x in self.stack:
                if any(o is x for o in operands):
                    self.found.add(name)
        return func(*args, **kwargs)


def _residual_modules(
    model: nn.Module, example_input: torch.Tensor | Inputs
) -> dict[str, nn.Module]:
    """Modules called once, with a float tensor whose shape their output keeps, that add it."""
    stack: list[tuple[str, torch.Tensor]] = []
    calls: dict[str, int] = {}
    same_shape: set[str] = set()
    residual: set[str] = set()
    handles = []

    def before(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name] = calls.get(name, 0) + 1
            x = _first_tensor(args, kwargs)
            stack.append((name, x if x is not None and x.is_floating_point() else None))

        return hook

    def after(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            _, x = stack.pop()
            if (
                x is not None
                and isinstance(output, torch.Tensor)
                and output.shape == x.shape
                and output.dtype == x.dtype
            ):
                same_shape.add(name)

        return hook

    modules = {n: m for n, m in model.named_modules() if n and next(m.children(), None) is not None}
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
        handles.append(module.register_forward_hook(after(name), with_kwargs=True))
    try:
        with torch.no_grad(), _Residuals(stack, residual):
            run_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    if modules and not calls:  # modules are only names here: one graph calls their layers
        _FLAT.add(model)
    return {n: modules[n] for n in modules if calls.get(n) == 1 and n in same_shape & residual}


def _detect(model: nn.Module, example_input: torch.Tensor | Inputs) -> tuple[Block, ...]:
    found = _residual_modules(model, example_input)

    def inside(name: str, outer: str) -> bool:
        return name.startswith(outer + ".")

    def outermost(names: list[str]) -> list[str]:
        return [n for n in names if not any(inside(n, o) for o in names if o != n)]

    def layers_of(name: str) -> tuple[str, ...]:
        return tuple(
            f"{name}.{n}"
            for n, m in found[name].named_modules()
            if n and isinstance(m, PRUNABLE_TYPES)
        )

    layers = {name: layers_of(name) for name in found}
    # A sequence of blocks (a ResNet stage) is not a block: its blocks are. A module wrapping one
    # block and nothing else that prunes (a stage of one block) is named by that block.
    names = [
        n
        for n in found
        if layers[n]
        and len(outermost([d for d in found if inside(d, n)])) < 2
        and not any(inside(d, n) and layers[d] == layers[n] for d in found)
    ]
    blocks = []
    for name in outermost(names):
        params = sum(p.numel() for p in found[name].parameters())
        blocks.append(Block(name, type(found[name]).__name__, layers[name], params))
    return tuple(blocks)


_FOUND: weakref.WeakKeyDictionary[nn.Module, tuple[Block, ...]] = weakref.WeakKeyDictionary()
_FLAT: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models whose modules never run themselves
_FAILED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def find_blocks(model: nn.Module, example_input: torch.Tensor | Inputs) -> tuple[Block, ...]:
    """The removable blocks of ``model``, in model order (found once per model object: the blocks
    of an architecture do not change with its weights)."""
    with _LOCK:
        known = _FOUND.get(model)
    if known is None:
        try:
            known = _detect(model, example_input)
        except Exception as e:  # an exotic forward: no block, and why_no_blocks says so
            _FAILED[model] = f"{type(e).__name__}: {str(e).strip()[:200]}"
            known = ()
        with _LOCK:
            _FOUND[model] = known
    return known


def why_no_blocks(model: nn.Module) -> str:
    """Why a model without removable blocks has none (shown where blocks would be listed), once
    :func:`find_blocks` has looked at it."""
    if model in _FAILED:
        return f"looking for them failed ({_FAILED[model]})"
    flat = model in _FLAT or isinstance(model, torch.fx.GraphModule)
    if flat or not any(next(m.children(), None) is not None for n, m in model.named_modules() if n):
        return (
            "the model is one flat graph (a .pt2 or an .onnx file has no module per block); load"
            " it as PATH.py:FUNC to remove whole blocks"
        )
    return (
        "no module adds its own input to what it computes (a residual block with the identity"
        " as shortcut), so no block can become the identity"
    )


def check_blocks(
    names: tuple[str, ...], blocks: tuple[Block, ...], layers: dict[str, float], model: nn.Module
) -> None:
    """Refuse a removal of unknown blocks, or a ratio given to a layer of a removed block.

    ``layers`` maps the plan's layers to their ratios."""
    known = {b.name: b for b in blocks}
    unknown = [n for n in names if n not in known]
    if unknown:
        if not blocks:
            raise PlanError(
                f"cannot remove block(s) {unknown}: this model has no removable block"
                f" ({why_no_blocks(model)})"
            )
        shown = ", ".join(list(known)[:8]) + (", ..." if len(known) > 8 else "")
        raise PlanError(
            f"unknown block(s) {unknown} for this model; its removable blocks are: {shown}"
        )
    for name in names:
        inner = [n for n in known[name].layers if layers.get(n)]
        if inner:
            raise PlanError(
                f"layer {inner[0]!r} is inside block {name!r}, which the plan removes; drop its"
                " ratio (the block's layers go with it)"
            )


def remove_blocks(model: nn.Module, names: tuple[str, ...] | list[str]) -> None:
    """Replace each named block of ``model`` (in place) by the identity."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        removed = type(parent.get_submodule(child)).__name__
        setattr(parent, child, Skipped(removed))
