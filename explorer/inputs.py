"""Model inputs with several named tensors: a text model's ``input_ids`` and ``attention_mask``.

Most models take one tensor, and everything passes it as one (``torch.Tensor``: unchanged). A
model taking several gets an ``Inputs``: named tensors in order, sharing their first (batch)
dimension, of any dtype the model takes (integer token ids, a 0/1 mask). It slices along the batch
like a tensor (``x[:1]``, ``x[i : i + n]``, ``len(x)``), ``numpy()`` gives the feeds ONNX Runtime
takes by name, and ``run_model`` calls a model with it: by keyword where the model's ``forward``
names every input (Hugging Face models: ``input_ids=...``), positionally otherwise (an ONNX graph
or a program loaded with its inputs in that order).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Inputs", "batch_size", "describe", "export_args", "run_model"]


@dataclass(frozen=True)
class Inputs:
    """Named input tensors, in the model's order, sharing the batch dimension."""

    tensors: tuple[tuple[str, torch.Tensor], ...]

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("Inputs needs at least one tensor")
        sizes = {int(t.shape[0]) if t.dim() else -1 for _, t in self.tensors}
        if len(sizes) != 1 or -1 in sizes:
            raise ValueError(
                "inputs must share their first (batch) dimension, got "
                f"{[(n, tuple(t.shape)) for n, t in self.tensors]}"
            )

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor]) -> Inputs:
        return cls(tuple(tensors.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tensors)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def values(self) -> Iterator[torch.Tensor]:
        return (t for _, t in self.tensors)

    def __len__(self) -> int:
        return int(self.tensors[0][1].shape[0])

    def __getitem__(self, index: slice | int | torch.Tensor | np.ndarray) -> Inputs:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Inputs(tuple((name, t[index]) for name, t in self.tensors))

    def clone(self) -> Inputs:
        return Inputs(tuple((name, t.clone()) for name, t in self.tensors))

    def contiguous(self) -> Inputs:
        return Inputs(tuple((name, t.contiguous()) for name, t in self.tensors))

    def numpy(self) -> dict[str, np.ndarray]:
        """The feeds of an ONNX Runtime session whose inputs carry these names."""
        return {name: t.detach().cpu().numpy() for name, t in self.tensors}

    def cat(self, other: Inputs) -> Inputs:
        return Inputs(
            tuple((name, torch.cat([t, other.as_dict()[name]])) for name, t in self.tensors)
        )

    def describe(self) -> str:
        """``input_ids int64 (16,), attention_mask int64 (16,)``: names, dtypes, sample shapes."""
        return ", ".join(
            f"{name} {str(t.dtype).removeprefix('torch.')} {tuple(t.shape[1:])}"
            for name, t in self.tensors
        )


def _takes_keywords(model: nn.Module, names: tuple[str, ...]) -> bool:
    """Does ``model.forward`` name every one of ``names`` as a parameter?"""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return set(names) <= named


def _order(model: nn.Module, x: Inputs) -> tuple[str, ...] | None:
    """How to call ``model`` with ``x``: None by keyword, else the names in positional order (a
    model that declares ``input_names``, as a loaded ONNX graph or program does, takes them in
    that order)."""
    declared = getattr(model, "input_names", None)
    if isinstance(declared, (tuple, list)) and set(declared) == set(x.names):
        return tuple(declared)
    if _takes_keywords(model, x.names):
        return None
    return x.names


def run_model(model: nn.Module, x: torch.Tensor | Inputs) -> Any:
    """``model(x)``; for ``Inputs``, by keyword where ``forward`` names them all, else in order."""
    if not isinstance(x, Inputs):
        return model(x)
    order, tensors = _order(model, x), x.as_dict()
    return model(**tensors) if order is None else model(*(tensors[n] for n in order))


def export_args(
    model: nn.Module, x: torch.Tensor | Inputs
) -> tuple[tuple, dict[str, torch.Tensor], list[str] | None]:
    """``(args, kwargs, names)`` that call ``model`` as ``run_model`` does (for torch.export and
    the ONNX exporters), and the inputs' names in that order (None for a single tensor)."""
    if not isinstance(x, Inputs):
        return (x,), {}, None
    order, tensors = _order(model, x), x.as_dict()
    if order is None:  # by keyword: the exporters lay the inputs out in the signature's order
        params = list(inspect.signature(model.forward).parameters)
        names = sorted(tensors, key=params.index)
        return (), {n: tensors[n] for n in names}, names
    return tuple(tensors[n] for n in order), {}, list(order)


def batch_size(x: torch.Tensor | Inputs) -> int:
    return len(x) if isinstance(x, Inputs) else int(x.shape[0])


def describe(x: torch.Tensor | Inputs, name: str = "x") -> str:
    """What a model is fed: ``x float32 (3, 32, 32)`` or every named input."""
    if isinstance(x, Inputs):
        return x.describe()
    return f"{name} {str(x.dtype).removeprefix('torch.')} {tuple(x.shape[1:])}"
