"""Model specs: ``zoo:NAME``, ``PATH.py:FUNC``, ``package.module:FUNC``, ``PATH.pt2``,
``PATH.onnx``.

A python entrypoint is the user's own code and is run as such (the app labels it). Weights inside
it should be loaded with ``weights_only=True``; we never unpickle a file ourselves: a ``.pt2`` is
checked before torch reads it (``explorer.models.pt2_import``), an ``.onnx`` is protobuf read by
our own interpreter (``explorer.models.onnx_import``), and a pickled ``.pt``/``.pth`` is refused
with the ways to save the model instead. Every loaded model must have finite weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.entrypoints import call_entrypoint
from explorer.errors import ModelLoadError
from explorer.heads import attach_in_proj
from explorer.models.outputs import logits_of

__all__ = ["PICKLE_SUFFIXES", "SAVE_ADVICE", "check_finite", "input_shape_of", "load_model"]

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar")
SAVE_ADVICE = (
    "save the model with torch.export.save(torch.export.export(model, (x,)), 'model.pt2') (give"
    " dynamic_shapes for the batch), export it to ONNX, or give PATH.py:FUNC where FUNC builds the"
    " module and loads its state dict with torch.load(..., weights_only=True)"
)


def input_shape_of(model: nn.Module) -> tuple[int | None, ...] | None:
    """The per-sample input shape ``model`` expects, as far as it says (None: a free dimension).

    ONNX files declare it and ``.pt2`` programs keep their example; for other modules the first
    convolution gives the channels (``(3, None, None)``); otherwise None (unknown).
    """
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple):
        return shape
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return (module.in_channels, *([None] * (module.weight.ndim - 2)))
        if isinstance(module, nn.Linear):
            return None
    return None


def _logits_hook(module: nn.Module, args: tuple, output: Any) -> Any:
    logits = logits_of(output)
    if (
        logits is not output and "output_note" not in module.__dict__
    ):  # said once, on the Model page and by evaluate
        kind = "logits" if isinstance(output, Mapping) else "first element"
        module.__dict__["output_note"] = f"the {kind} of its {type(output).__name__}"
    return logits


def _use_logits(model: nn.Module) -> None:
    """Make ``model`` return its logits: a forward hook (module names, and so plans, unchanged)
    that takes them out of a ``ModelOutput``, a mapping or a tuple. Copies and exports keep it."""
    if _logits_hook not in model._forward_hooks.values():
        model.register_forward_hook(_logits_hook)


class _Conv1dLinear(nn.Linear):
    """Hugging Face's ``Conv1D`` (GPT-2's layers): a linear layer whose weight is stored
    transposed. As an ``nn.Linear`` it is listed, pruned and exported like one."""

    display_type = "Conv1D (a Linear)"


def _conv1d_as_linear(model: nn.Module) -> None:
    """Replace every ``transformers`` ``Conv1D`` by the ``nn.Linear`` computing the same (its weight
    transposed; the names, and so the plans, are unchanged)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            cls = type(child)
            if (
                cls.__name__ != "Conv1D"
                or not cls.__module__.startswith("transformers")
                or not isinstance(getattr(child, "weight", None), torch.Tensor)
                or child.weight.ndim != 2
            ):
                continue
            n_in, n_out = child.weight.shape
            linear = _Conv1dLinear(n_in, n_out, bias=child.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(child.weight.T)
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            linear.requires_grad_(child.weight.requires_grad)
            linear.train(child.training)
            setattr(parent, child_name, linear)


def check_finite(model: nn.Module, spec: str) -> None:
    """Raise ModelLoadError naming the first parameter holding NaN or Inf, or buffer holding NaN
    (a buffer may hold an infinity on purpose: an attention mask's -inf)."""
    for name, tensor in model.named_parameters():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(f"{spec}: weight {name!r} holds {bad} NaN or Inf value(s)")
    for name, tensor in model.named_buffers():
        if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
            raise ModelLoadError(
                f"{spec}: buffer {name!r} holds {int(torch.isnan(tensor).sum())} NaN value(s)"
            )


def _file(spec: str) -> Path:
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(
            f"{spec}: no such file" if not path.exists() else f"{spec}: not a file"
        )
    return path


def load_model(spec: str) -> nn.Module:
    """Load a model spec into an ``nn.Module`` in eval mode.

    Raises:
        ModelLoadError: naming the spec and what is wrong with it (also: NaN or Inf in a weight).
    """
    from explorer.models.zoo import ZOO, build

    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(
            f"empty model spec {spec!r}; use zoo:NAME, PATH.pt2, PATH.onnx or PATH.py:FUNC"
        )
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in ZOO:
            raise ModelLoadError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
        from explorer.data import zoo_input_shape

        zoo_model = build(name)
        zoo_model.input_shape = zoo_input_shape(ZOO[name].data)  # what input_shape_of reports
        return zoo_model
    lower = spec.lower()
    if lower.endswith(".pt2"):
        from explorer.models.pt2_import import load_program

        model = load_program(_file(spec))
    elif lower.endswith(".onnx"):
        from explorer.models.onnx_import import load_onnx

        model = load_onnx(_file(spec))
    elif lower.endswith(PICKLE_SUFFIXES):
        raise ModelLoadError(
            f"{spec}: refused: a {Path(spec).suffix} file is a pickle, and unpickling "
            f"runs code from the file; {SAVE_ADVICE}"
        )
    elif ":" not in spec:
        raise ModelLoadError(
            f"{spec}: unknown model spec; use zoo:NAME, PATH.pt2, PATH.onnx or PATH.py:FUNC"
        )
    else:
        model = call_entrypoint(spec, ModelLoadError)
        if not isinstance(model, nn.Module):
            raise ModelLoadError(
                f"{spec}: must return a torch.nn.Module, got {type(model).__name__}"
            )
        _use_logits(model)
        _conv1d_as_linear(model)
    check_finite(model, spec)
    attach_in_proj(
        model
    )  # nn.MultiheadAttention's fused query/key/value projection: a listed layer
    if not any(
        isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in model.modules()
    ):
        raise ModelLoadError(
            f"{spec}: no Conv or Linear layer holding its own weights was found, so there "
            "is nothing to prune (weights computed at run time are not layers)"
        )
    return model.eval()
