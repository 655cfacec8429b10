"""Sensitivity of whole blocks: accuracy and loss with one block removed (it becomes the identity).

A block is a unit with two points: ratio 0 (the dense model) and ratio 1 (the block gone, with
every layer inside it). Each point is the really changed model, exported to ONNX and scored in
ONNX Runtime on the evaluation data, as a structured point is; points are cached on disk per
(model, data), so reopening the page is instant. The rows carry what removing the block saves:
its parameters and the multiply-accumulates of its layers.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from explorer.blocks import Block, remove_blocks, why_no_blocks
from explorer.errors import PlanError
from explorer.onnx_template import write_onnx
from explorer.progress import Progress, no_progress
from explorer.prune import fresh_copy
from explorer.sensitivity.cache import PointCache
from explorer.sensitivity.engines import Result
from explorer.sensitivity.engines.base import reduce_terms, score_logits
from explorer.sensitivity.engines.depgraph import score_onnx
from explorer.sensitivity.scanning import COLUMNS
from explorer.subject import Subject

__all__ = ["BLOCK_COLUMNS", "REMOVED", "block_cache", "block_scan", "removable"]

REMOVED = 1.0  # the ratio of a removed block's point: all of it goes
BLOCK_COLUMNS = [*COLUMNS, "params", "macs"]


def removable(subject: Subject, names: Sequence[str] | None = None) -> list[Block]:
    """The subject's removable blocks (those named, in that order; all when None).

    Raises:
        PlanError: the model has no removable block, or a name is not one of them."""
    found = {b.name: b for b in subject.blocks}
    if not found:
        raise PlanError(
            f"{subject.model_spec} has no removable block: {why_no_blocks(subject.model)}"
        )
    if names is None:
        return list(found.values())
    unknown = [n for n in names if n not in found]
    if unknown:
        raise PlanError(f"unknown block(s) {unknown}; the removable blocks are {list(found)}")
    return [found[n] for n in names]


def block_cache(subject: Subject) -> PointCache:
    """The on-disk points of ``subject``'s blocks, each removed alone (keyed ``(block, 1.0)``)."""
    return PointCache("blocks", subject, "block-removal", COLUMNS)


def block_scan(
    subject: Subject,
    blocks: Sequence[str] | None = None,
    on_progress: Progress = no_progress,
    *,
    cache: bool = True,
) -> pd.DataFrame:
    """Evaluate the model with one block removed at a time.

    Returns a DataFrame with the columns of :func:`explorer.sensitivity.scan` (``layer`` is the
    block's name, ``members`` its layers) plus ``params`` and ``macs`` (what removing the block
    saves): for every block a ratio-0 row (the dense model) then its ratio-1 row (removed).

    Raises:
        PlanError: no removable block, or an unknown one.
    """
    todo = removable(subject, blocks)
    store = block_cache(subject) if cache else None
    known = store.load() if store is not None else {}
    dense_metrics, dense_logits = subject.dense()
    test = subject.data.test
    reference = dense_logits if test.y is None else None
    dense = score_logits(dense_logits, subject, reference)
    missing = [b for b in todo if (b.name, REMOVED) not in known]
    fresh: dict[tuple[str, float], dict] = {}
    if missing:
        data = {
            "x": test.x.numpy(),
            "y": test.y.numpy() if test.y is not None else None,
            "reference": reference,
        }
        on_progress(
            0.0, f"{len(missing)} blocks, each removed alone (exported, scored in ONNX Runtime)"
        )
        start = time.perf_counter()
        for k, block in enumerate(missing):
            result = _removed(subject, block, data)
            fresh[(block.name, REMOVED)] = _row(block, REMOVED, result)
            done = (k + 1) / len(missing)
            left = (time.perf_counter() - start) * (1 - done) / done
            on_progress(done * 0.999, f"{block.name} removed (~{left:.0f} s left)")
        if store is not None:
            store.save(fresh)
    on_progress(1.0, "done")
    known.update(fresh)
    macs = {layer.name: layer.macs for layer in subject.inventory.layers}
    rows = []
    for block in todo:
        saved = {"params": block.params, "macs": sum(macs.get(n, 0) for n in block.layers)}
        rows.append({**_row(block, 0.0, dense), **saved})
        rows.append({**dict(known[(block.name, REMOVED)]), **saved})
    out = pd.DataFrame(rows, columns=BLOCK_COLUMNS)
    out["ratio"] = [0.0, REMOVED] * len(todo)
    return out


def _removed(subject: Subject, block: Block, data: dict) -> Result:
    model = fresh_copy(subject.model)
    remove_blocks(model, [block.name])
    with tempfile.TemporaryDirectory(prefix="explorer-block-") as tmp:
        path = Path(tmp) / "removed.onnx"
        write_onnx(subject, model, path)
        terms = score_onnx(data, path.read_bytes(), os.cpu_count() or 1)
    return reduce_terms([terms], data["y"] is not None)


def _row(block: Block, ratio: float, result: Result) -> dict:
    return {
        "layer": block.name,
        "ratio": ratio,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "members": ",".join(block.layers),
    }
