"""SparseGPT (Frantar & Alistarh 2023, "Massive Language Models Can Be Accurately Pruned in
One-Shot"): prune a layer by approximate second-order reconstruction. With ``H = 2 X X^T`` of the
layer's inputs (calibration data, 1% damping), columns are visited in blocks of 128; in each block
the weights of smallest ``w^2 / [H^-1]_jj^2`` are zeroed (or, N:M, the N smallest of every M) and
the error is spread over the columns not yet visited through the Cholesky factor of ``H^-1``:
the surviving weights are updated so the layer's output moves as little as possible.

Every layer is scored on the unpruned model's inputs (as a one-layer sensitivity point needs); the
updated weights are kept per (model, data, layer, ratio), so a scan or a slider move that asks
again costs nothing. A grouped convolution is solved group by group.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from explorer.hashing import model_hash
from explorer.inspect import Inventory
from explorer.methods import register
from explorer.methods.base import Kind, LayerContext, WeightMethod, layer_is_hookable
from explorer.methods.calibration import fingerprint, input_hessians

__all__ = ["BLOCK", "DAMP", "sparsegpt_weight"]

BLOCK = 128
DAMP = 0.01
_KEEP_BYTES = 512 * 2**20
_results: OrderedDict[tuple[object, ...], torch.Tensor] = OrderedDict()
_lock = threading.Lock()


@contextmanager
def _one_thread() -> Iterator[None]:
    """The column loop is thousands of tiny sequential ops: with several intra-op threads each one
    pays a synchronisation (50x slower on a busy 2-core machine). The app already runs torch on one
    thread; elsewhere the setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sparsegpt_weight(
    w: torch.Tensor,
    h: torch.Tensor,
    ratio: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = BLOCK,
    damp: float = DAMP,
) -> torch.Tensor:
    """The pruned and updated ``w`` (rows x cols) given the Hessian ``h`` (cols x cols).

    Unstructured (``n == 0``): exactly ``round(ratio * w.numel())`` weights become zero, shared
    over the column blocks in proportion to their size. N:M: N of every M consecutive columns of
    each row.
    """
    with _one_thread():
        return _sparsegpt(w, h, ratio, n, m, blocksize, damp)


def _sparsegpt(
    w: torch.Tensor, h: torch.Tensor, ratio: float, n: int, m: int, blocksize: int, damp: float
) -> torch.Tensor:
    w = w.detach().double().clone()
    h = h.detach().double().clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0  # a feature that is always zero: its weight does not matter
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    total = round(ratio * w.numel()) if not n else 0
    done = 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        prune = torch.zeros_like(w1, dtype=torch.bool)
        if not n:
            k = total - done if i2 == cols else round(total * i2 / cols) - done
            done += k
            if k:
                saliency = w1.pow(2) / torch.diag(hinv1).reshape(1, -1).pow(2)
                prune.view(-1)[saliency.reshape(-1).topk(k, largest=False).indices] = True
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if n and i % m == 0:
                width = min(m, count - i)
                saliency = w1[:, i : i + width].pow(2) / torch.diag(hinv1)[i : i + width].reshape(
                    1, -1
                ).pow(2)
                drop = width * n // m
                if drop:
                    prune.scatter_(1, i + saliency.topk(drop, dim=1, largest=False).indices, True)
            q = col.clone()
            q[prune[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


class SparseGPT(WeightMethod):
    name = "sparsegpt-unstructured"
    summary = (
        "zero weights by second-order saliency and update the survivors to keep the layer's output "
        "(SparseGPT; Hessian from calibration data)"
    )
    needs_data = True
    supports_global = False  # the saliency is relative to each layer's own Hessian
    updates_weights = True
    n, m = 0, 0

    def applies_to(self, layer: str, inventory: Inventory) -> str | None:
        if inventory.ort_ops:
            return (
                "part of this graph runs in ONNX Runtime, and only zeroed weights can be written"
                " back into it; SparseGPT also changes the weights it keeps"
            )
        return layer_is_hookable(layer, inventory)

    def prune_weight(self, ctx: LayerContext, ratio: float) -> torch.Tensor:
        if ratio == 0:
            return ctx.weight.clone()
        calibration = ctx.require_calibration(self.name)
        key = (
            self.name,
            model_hash(ctx.model),
            fingerprint(calibration),
            ctx.layer,
            round(ratio, 6),
        )
        with _lock:
            if key in _results:
                _results.move_to_end(key)
                return _results[key].clone()
        w = ctx.weight
        h = input_hessians(ctx.model, calibration, [ctx.layer])[ctx.layer]
        groups = getattr(ctx.module, "groups", 1)
        rows = w.reshape(groups, w.shape[0] // groups, -1)
        hs = h.reshape(groups, h.shape[-1], h.shape[-1]) if h.dim() == 3 else h.unsqueeze(0)
        new = torch.cat(
            [sparsegpt_weight(rows[g], hs[g], ratio, self.n, self.m) for g in range(groups)]
        )
        if (
            not self.n
        ):  # exact sparsity over the layer: a grouped conv's per-group rounding can differ by a few
            new = _exact(new, w, ratio)
        out = new.reshape(w.shape).to(w.dtype)
        with _lock:
            _results[key] = out
            while (
                sum(t.numel() * t.element_size() for t in _results.values()) > _KEEP_BYTES
                and len(_results) > 1
            ):
                _results.popitem(last=False)
        return out.clone()


def _exact(new: torch.Tensor, old: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero or restore the few weights that make the zero count exactly ``round(ratio * n)``."""
    want = round(ratio * new.numel())
    flat = new.reshape(-1).clone()
    zeros = int((flat == 0).sum())
    if zeros < want:
        alive = (flat != 0).nonzero().squeeze(1)
        flat[alive[flat[alive].abs().topk(want - zeros, largest=False).indices]] = 0
    elif zeros > want:
        gone = ((flat == 0) & (old.reshape(-1) != 0)).nonzero().squeeze(1)
        back = gone[old.reshape(-1)[gone].abs().topk(min(zeros - want, len(gone))).indices]
        flat[back] = old.reshape(-1)[back].to(flat.dtype)
    return flat.reshape(new.shape)


class SparseGPT24(SparseGPT):
    name = "sparsegpt-2:4"
    kind: Kind = "semi-structured"
    summary = (
        "in every block of 4 consecutive input weights, zero 2 and update the rest (SparseGPT N:M)"
    )
    n, m = 2, 4


register(SparseGPT())
register(SparseGPT24())
