"""When two runs of a model agree: one rule, relative to the scale of its outputs.

A float32 network sums thousands of products per output, so two correct runs (torch and ONNX
Runtime, or a program before and after its weights became layers) differ by rounding errors that
grow with the outputs themselves: a ResNet-50 whose logits reach 13 differs by ~1e-5 where a tiny
model whose logits stay below 0.1 differs by ~1e-7. Outputs agree when the largest difference is
at most ``REL_TOL`` times the largest magnitude of the reference output.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["REL_TOL", "agree", "relative_error"]

REL_TOL = 1e-4
_TINY = 1e-30  # an all-zero reference: any difference is an error


def _array(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def relative_error(
    output: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor
) -> float:
    """``max |output - reference| / max |reference|`` (inf on a shape mismatch or a NaN)."""
    out, ref = _array(output), _array(reference)
    if out.shape != ref.shape:
        return float("inf")
    if out.size == 0:
        return 0.0
    error = float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), _TINY))
    return error if np.isfinite(error) else float("inf")


def agree(
    output: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, rel: float = REL_TOL
) -> bool:
    """Do the two outputs agree to ``rel`` of the reference's scale?"""
    return relative_error(output, reference) <= rel
