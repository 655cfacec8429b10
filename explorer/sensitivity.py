"""Per-layer sensitivity: accuracy and loss when only one layer (or dependency group) is pruned.

For structured methods a row stands for a whole dependency group (named by its first member):
pruning one member alone would also remove the coupled channels of the others, and a layer whose
pruning alone changes nothing must not look robust.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from explorer.errors import PlanError
from explorer.evaluate import evaluate_torch
from explorer.plan import LayerRule, PruningPlan, check_ratio
from explorer.progress import Progress, no_progress
from explorer.prune import get_method
from explorer.subject import Subject

__all__ = ["DEFAULT_RATIOS", "COLUMNS", "scan", "units"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COLUMNS = ["layer", "ratio", "accuracy", "loss", "members"]


def units(subject: Subject, method: str) -> dict[str, list[str]]:
    """What a scan prunes at a time: every layer, or every dependency group for structured methods."""
    if get_method(method).structured:
        if subject.inventory.structured_error:
            raise PlanError(f"{method}: {subject.inventory.structured_error}")
        return {gid: list(members) for gid, members in subject.inventory.groups.items()}
    return {name: [name] for name in subject.layer_names}


def scan(subject: Subject, method: str = "l1-unstructured", ratios: Sequence[float] = DEFAULT_RATIOS,
         layers: Sequence[str] | None = None, on_progress: Progress = no_progress) -> pd.DataFrame:
    """Evaluate the model with one unit pruned at a time, at each ratio (ratio 0: the dense model).

    Returns a DataFrame with columns ``layer, ratio, accuracy, loss, members``.
    """
    ratios = sorted({check_ratio(r, "sensitivity ratio") for r in ratios} - {0.0})
    todo = units(subject, method)
    if layers is not None:
        missing = [n for n in layers if n not in todo]
        if missing:
            raise PlanError(f"unknown {'group' if get_method(method).structured else 'layer'}(s) {missing} "
                            f"for {method}; choose from {list(todo)}")
        todo = {n: todo[n] for n in layers}
    split = subject.data.test
    with torch.no_grad():
        dense_logits = np.concatenate([subject.model(split.x[i : i + 512]).numpy() for i in range(0, len(split), 512)])
    reference = dense_logits if split.y is None else None
    dense_acc, dense_loss = evaluate_torch(subject.model, split, reference)
    rows = []
    total, done, start = len(todo) * len(ratios), 0, time.perf_counter()
    for name, members in todo.items():
        rows.append((name, 0.0, dense_acc, dense_loss, ",".join(members)))
        for ratio in ratios:
            plan = PruningPlan(method=method, layers={m: LayerRule(ratio) for m in members})
            acc, loss = evaluate_torch(subject.prune(plan), split, reference)
            rows.append((name, ratio, acc, loss, ",".join(members)))
            done += 1
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            on_progress(done / total, f"{name} @ {ratio:.2f} ({done}/{total}, ~{eta:.0f} s left)")
    return pd.DataFrame(rows, columns=COLUMNS)
