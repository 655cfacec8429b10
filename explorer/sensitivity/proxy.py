"""Data-free sensitivity: the fraction of a unit's weight magnitude each ratio removes (Sparsify's
idea), computed with the very masks (or channel scores) pruning would apply. Instant: no data read.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from explorer.methods import get_method
from explorer.prune import kept_channels, pruned_weight
from explorer.sensitivity.engines import engine_for
from explorer.sensitivity.engines.depgraph import StructuredEngine
from explorer.sensitivity.units import DEFAULT_RATIOS, check_ratios, select
from explorer.subject import Subject

__all__ = ["PROXY_COLUMNS", "proxy"]

PROXY_COLUMNS = ["layer", "ratio", "magnitude_removed", "members"]


def proxy(
    subject: Subject,
    method: str = "l1-unstructured",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Data-free sensitivity: the fraction of a unit's weight magnitude each ratio removes.

    Unstructured and N:M: the L1 mass of the weights the mask zeroes, over the layer's L1 mass.
    Structured: the group importance (the method's channel norm, summed over coupled layers) of
    the channels removed, over the group's total. 0 at ratio 0; no data is read.

    Returns a DataFrame with columns ``layer, ratio, magnitude_removed, members``.
    """
    m = get_method(method)
    ratios = check_ratios(ratios)
    todo = select(subject, method, layers)
    rows = []
    if m.structured:
        eng = engine_for(subject, m)
        assert isinstance(eng, StructuredEngine)
        for gid, members in todo.items():
            imp = eng.importance(gid, m).double()
            order = imp.sort().values
            total = float(order.sum()) or 1.0
            rows.append((gid, 0.0, 0.0, ",".join(members)))
            for r in ratios:
                n_prune = len(order) - kept_channels(len(order), r)
                rows.append((gid, r, float(order[:n_prune].sum()) / total, ",".join(members)))
        return pd.DataFrame(rows, columns=PROXY_COLUMNS)
    modules = dict(subject.model.named_modules())
    for name in todo:
        w = modules[name].weight.detach()
        total = float(w.abs().double().sum()) or 1.0
        rows.append((name, 0.0, 0.0, name))
        for r in ratios:
            kept = pruned_weight(m, subject.model, name, r, calibration=subject.calibration)
            rows.append((name, r, 1.0 - float(kept.abs().double().sum()) / total, name))
    return pd.DataFrame(rows, columns=PROXY_COLUMNS)
