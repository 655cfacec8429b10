"""Model specs: ``zoo:NAME``, ``PATH.py:FUNC``, ``package.module:FUNC``, ``PATH.pt2``, ``PATH.onnx``.

A python entrypoint is the user's own code and is run as such (the app labels it). Weights inside
it should be loaded with ``weights_only=True``; we never unpickle a file ourselves: a ``.pt2`` is
checked before torch reads it (``explorer.models.pt2_import``), an ``.onnx`` is protobuf read by
our own interpreter (``explorer.models.onnx_import``), and a pickled ``.pt``/``.pth`` is refused
with the ways to save the model instead. Every loaded model must have finite weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from explorer.entrypoints import call_entrypoint
from explorer.errors import ModelLoadError

__all__ = ["PICKLE_SUFFIXES", "SAVE_ADVICE", "check_finite", "input_shape_of", "load_model"]

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar")
SAVE_ADVICE = (
    "save the model with torch.export.save(torch.export.export(model, (x,)), 'model.pt2') "
    "(give dynamic_shapes for the batch), export it to ONNX, or give PATH.py:FUNC where FUNC builds "
    "the module and loads its state dict with torch.load(..., weights_only=True)"
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


def check_finite(model: nn.Module, spec: str) -> None:
    """Raise ModelLoadError naming the first parameter or buffer holding NaN or Inf."""
    for kind, items in (("weight", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in items:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ModelLoadError(f"{spec}: {kind} {name!r} holds {bad} NaN or Inf value(s)")


def _file(spec: str) -> Path:
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(f"{spec}: no such file" if not path.exists() else f"{spec}: not a file")
    return path


def load_model(spec: str) -> nn.Module:
    """Load a model spec into an ``nn.Module`` in eval mode.

    Raises:
        ModelLoadError: naming the spec and what is wrong with it (also: NaN or Inf in a weight).
    """
    from explorer.models.zoo import ZOO, build

    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"empty model spec {spec!r}; use zoo:NAME, PATH.pt2, PATH.onnx or PATH.py:FUNC")
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
        raise ModelLoadError(f"{spec}: refused: a {Path(spec).suffix} file is a pickle, and unpickling "
                             f"runs code from the file; {SAVE_ADVICE}")
    elif ":" not in spec:
        raise ModelLoadError(f"{spec}: unknown model spec; use zoo:NAME, PATH.pt2, PATH.onnx or PATH.py:FUNC")
    else:
        model = call_entrypoint(spec, ModelLoadError)
        if not isinstance(model, nn.Module):
            raise ModelLoadError(f"{spec}: must return a torch.nn.Module, got {type(model).__name__}")
    check_finite(model, spec)
    if not any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in model.modules()):
        raise ModelLoadError(f"{spec}: no Conv or Linear layer holding its own weights was found, so there "
                             "is nothing to prune (weights computed at run time are not layers)")
    return model.eval()
