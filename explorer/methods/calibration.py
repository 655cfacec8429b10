"""What data-aware criteria read from the calibration data, computed in one pass and kept.

Every statistic is of the *inputs* a prunable layer sees (Wanda's ``||X_j||``, SparseGPT's
``X X^T``, FLAP's per-channel mean and variance) or of the loss gradient (Taylor), collected with
forward hooks over at most ``SAMPLES`` calibration samples (a seeded subset), in batches. For a
convolution, an input feature is one (input channel, kernel position) of the unfolded patch, so a
feature lines up with one column of the weight reshaped to ``(out, in/groups * kh * kw)``.

Results are kept per (model hash, data fingerprint, statistic) in a small in-memory LRU: the
sensitivity engines and every plan that leaves the layers' shapes alone score with the statistics
of the unpruned model, computed once.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explorer.hashing import model_hash
from explorer.inputs import Inputs, run_model
from explorer.models.outputs import logits_of

if TYPE_CHECKING:
    from explorer.data import Split

__all__ = [
    "SAMPLES",
    "feature_square_sums",
    "fingerprint",
    "gradients",
    "input_abs_means",
    "input_hessians",
    "input_moments",
    "input_norms",
    "loss_on",
    "sample",
    "unfold_input",
]

SAMPLES = 256  # calibration samples at most (Wanda and SparseGPT use 128 sequences)
HESSIAN_SAMPLES = 128  # X X^T costs rows x features^2: SparseGPT's own calibration size
BATCH = 64
_KEEP_BYTES = (
    512 * 2**20
)  # statistics kept in memory (per model, data, statistic), least recently used out
_cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
_lock = threading.Lock()
_fingerprints: dict[int, str] = {}


def fingerprint(split: Split) -> str:
    """A hash of the calibration inputs (memoised per tensor object)."""
    key = id(split.x)
    if key not in _fingerprints:
        h = hashlib.sha256()
        for name, a in (
            split.x.numpy().items()
            if isinstance(split.x, Inputs)
            else [("", split.x.detach().numpy())]
        ):
            h.update(name.encode() + a.dtype.str.encode() + np.ascontiguousarray(a).tobytes())
        _fingerprints[key] = h.hexdigest()[:16]
        weakref.finalize(split.x, _fingerprints.pop, key, None)
    return _fingerprints[key]


def sample(split: Split, n: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor | None]:
    """At most ``n`` samples of ``split`` (a seeded subset, in their order), with their labels."""
    part = split.subset(n)
    return part.x, part.y


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _cached(kind: str, model: nn.Module, split: Split, compute: Callable[[], Any]) -> Any:
    key = (kind, model_hash(model), fingerprint(split))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = compute()
    with _lock:
        _cache[key] = value
        while len(_cache) > 1 and sum(_nbytes(v) for v in _cache.values()) > _KEEP_BYTES:
            _cache.popitem(last=False)
    return value


def _conv_geometry(
    module: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A Conv1d/Conv2d input as 4-D, with the padding a string padding stands for already applied,
    and the layer's kernel, dilation, padding and stride as pairs."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (
            (1, *module.kernel_size),
            (1, *module.dilation),
            (1, *module.stride),
        )
        padding = module.padding if isinstance(module.padding, str) else (0, *module.padding)
    else:
        kernel, dilation, padding, stride = (
            module.kernel_size,
            module.dilation,
            module.padding,
            module.stride,
        )
    if padding == "valid":
        padding = 0
    elif padding == "same":  # stride 1; an even kernel pads one more at the end, as torch does
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        x = F.pad(x, [p for t in reversed(total) for p in (t // 2, t - t // 2)])
        padding = 0

    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

    return x, pair(kernel), pair(dilation), pair(padding), pair(stride)


def unfold_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of features lined up with its weight's columns: ``(rows,
    features)``.

    Linear: every leading position is a row. Conv1d/Conv2d: the unfolded patches (im2col), features
    ordered (channel, kernel position) like ``weight.reshape(out, -1)``; a grouped convolution's
    features are those of all its input channels (slice ``g * in/groups`` for group ``g``).
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    x, kernel, dilation, padding, stride = _conv_geometry(module, x)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def feature_square_sums(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``unfold_input(module, x).pow(2).sum(0)`` in float64, without unfolding.

    A feature (channel c, kernel position (i, j)) of a convolution sums the squares of the input
    pixels that kernel position meets: one strided slice of the batch's summed squares per kernel
    position. The im2col matrix is kernel-size times the input (9x for a 3x3 conv); building it
    was most of a ResNet's calibration pass.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).pow(2).sum(0, dtype=torch.float64)
    x, (kh, kw), (dh, dw), (ph, pw), (sh, sw) = _conv_geometry(module, x)
    sq = F.pad(x.pow(2).sum(0, dtype=torch.float64), (pw, pw, ph, ph))  # (C, H, W)
    out_h = (sq.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (sq.shape[2] - dw * (kw - 1) - 1) // sw + 1
    sums = [
        sq[
            :,
            i * dh : i * dh + sh * (out_h - 1) + 1 : sh,
            j * dw : j * dw + sw * (out_w - 1) + 1 : sw,
        ].sum((1, 2))
        for i in range(kh)
        for j in range(kw)
    ]
    return torch.stack(sums, dim=1).reshape(-1)  # (channel, kernel position), like the weight


def _supported(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))


def _collect(
    model: nn.Module,
    split: Split,
    layers: Iterable[str],
    update: Callable[[str, nn.Module, torch.Tensor, Any], Any],
    samples: int = SAMPLES,
) -> dict[str, Any]:
    """Run the calibration samples through ``model`` with a hook on each of ``layers`` that folds
    the layer's input into its accumulator: ``acc = update(name, module, input, acc)``."""
    modules = dict(model.named_modules())
    acc: dict[str, Any] = {}
    hooks = []
    for name in layers:
        module = modules[name]

        def hook(mod: nn.Module, inputs: tuple[Any, ...], _out: Any, name: str = name) -> None:
            acc[name] = update(name, mod, inputs[0].detach().float(), acc.get(name))

        hooks.append(module.register_forward_hook(hook))
    x, _ = sample(split, samples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), BATCH):
                run_model(model, x[i : i + BATCH])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return acc


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _supported(m)]


def input_norms(model: nn.Module, split: Split) -> dict[str, torch.Tensor]:
    """Per layer, the L2 norm of each input feature over the calibration data (Wanda's
    ``||X_j||``)."""

    def update(name: str, mod: nn.Module, x: torch.Tensor, acc: Any) -> torch.Tensor:
        sq = feature_square_sums(mod, x)
        return sq if acc is None else acc + sq

    def compute() -> dict[str, torch.Tensor]:
        found = _collect(model, split, _layers(model), update)
        return {n: v.sqrt().float() for n, v in found.items()}

    return _cached("norms", model, split, compute)


def input_hessians(
    model: nn.Module, split: Split, layers: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Per layer, ``H = 2 X X^T / rows`` of its input features (SparseGPT's layer-wise Hessian) over
    ``HESSIAN_SAMPLES`` samples, accumulated in float32 as SparseGPT does (the factorisations that
    follow run in float64). A grouped convolution gets one Hessian per group, ``(groups, d, d)``:
    its outputs only read their own group's features."""
    layers = sorted(layers)

    def update(name: str, mod: nn.Module, x: torch.Tensor, acc: Any) -> tuple[torch.Tensor, int]:
        rows = unfold_input(mod, x)
        groups = getattr(mod, "groups", 1)
        if groups > 1:
            per = rows.reshape(len(rows), groups, -1)
            h = torch.einsum("rgi,rgj->gij", per, per)
        else:
            h = rows.T @ rows
        return (h, len(rows)) if acc is None else (acc[0] + h, acc[1] + len(rows))

    def compute() -> dict[str, torch.Tensor]:
        found = _collect(model, split, layers, update, HESSIAN_SAMPLES)
        return {n: (2 * h / max(rows, 1)).double() for n, (h, rows) in found.items()}

    return _cached("hessian:" + ",".join(layers), model, split, compute)


def input_moments(model: nn.Module, split: Split) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the mean and variance of each input *channel* over the calibration data and every
    position (FLAP's statistics): tensors of shape ``(in_channels,)``."""

    def update(
        name: str, mod: nn.Module, x: torch.Tensor, acc: Any
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        rows = (
            x.reshape(-1, x.shape[-1])
            if isinstance(mod, nn.Linear)
            else x.transpose(0, 1).reshape(x.shape[1], -1).T
        )
        rows = rows.double()
        s, sq = rows.sum(0), rows.pow(2).sum(0)
        return (s, sq, len(rows)) if acc is None else (acc[0] + s, acc[1] + sq, acc[2] + len(rows))

    def compute() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for n, (s, sq, rows) in _collect(model, split, _layers(model), update).items():
            mean = s / max(rows, 1)
            out[n] = (mean.float(), (sq / max(rows, 1) - mean.pow(2)).clamp_min(0).float())
        return out

    return _cached("moments", model, split, compute)


def input_abs_means(model: nn.Module, split: Split) -> dict[str, torch.Tensor]:
    """Per layer, the mean absolute value of each input *channel* over the calibration data (the
    mean activation of the channel that feeds it: Torch-Pruning's ``ActivationImportance`` score,
    accumulated over every batch)."""

    def update(name: str, mod: nn.Module, x: torch.Tensor, acc: Any) -> tuple[torch.Tensor, int]:
        rows = (
            x.reshape(-1, x.shape[-1])
            if isinstance(mod, nn.Linear)
            else x.transpose(0, 1).reshape(x.shape[1], -1).T
        )
        s = rows.abs().double().sum(0)
        return (s, len(rows)) if acc is None else (acc[0] + s, acc[1] + len(rows))

    def compute() -> dict[str, torch.Tensor]:
        return {
            n: (s / max(rows, 1)).float()
            for n, (s, rows) in _collect(model, split, _layers(model), update).items()
        }

    return _cached("abs-means", model, split, compute)


def loss_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy against the labels, or against the model's own top-1 where there are none
    (the dense model's own soft targets would give a zero gradient)."""
    logits = logits_of(run_model(model, x))
    target = y if y is not None else logits.detach().argmax(1)
    return F.cross_entropy(logits, target, reduction="sum")


def gradients(model: nn.Module, split: Split) -> dict[str, torch.Tensor]:
    """Per prunable layer, the gradient of the calibration loss with respect to its weight (summed
    over the samples, then divided by their number): what first-order Taylor criteria multiply
    with the weight. The model is not modified (its ``.grad`` fields are restored)."""

    def compute() -> dict[str, torch.Tensor]:
        x, y = sample(split)
        modules = {n: m for n, m in model.named_modules() if _supported(m)}
        params = {n: m.weight for n, m in modules.items()}
        saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = model.training
        model.eval()
        try:
            for p in params.values():
                p.requires_grad_(True)
            with torch.enable_grad():
                for i in range(0, len(x), BATCH):
                    got = torch.autograd.grad(
                        loss_on(model, x[i : i + BATCH], None if y is None else y[i : i + BATCH]),
                        list(params.values()),
                        allow_unused=True,
                    )
                    for n, g in zip(params, got, strict=False):
                        if g is not None:
                            grads[n] += g
        finally:
            for n, p in params.items():
                p.requires_grad_(saved[n][0])
                p.grad = saved[n][1]
            model.train(was_training)
        return {n: g / max(len(x), 1) for n, g in grads.items()}

    return _cached("gradients", model, split, compute)
