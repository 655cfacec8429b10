"""What of a model's output is its logits (a Hugging Face ``ModelOutput``, a tuple, a tensor)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["logits_of"]


def logits_of(output: Any) -> Any:
    """The logits in a model's output: a Hugging Face ``ModelOutput`` (or any mapping) gives its
    ``logits``, a tuple or list its first element; a tensor (or anything else) is returned as is."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return output
