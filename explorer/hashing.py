"""Content hashes that key caches: a model by its architecture and every tensor it holds."""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import nn

__all__ = ["model_hash"]

_HASHES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def model_hash(model: nn.Module) -> str:
    """A short hash of the model's architecture (its repr) and every tensor of its state dict.

    Memoised per model object: a model is hashed once, so a model that is modified after it was
    hashed (only the pruned copies are, and only before anything hashes them) keeps its old hash.
    """
    if model in _HASHES:
        return _HASHES[model]
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()[:16]
    _HASHES[model] = digest
    return digest
