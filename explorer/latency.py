"""Latency against width: the measured ONNX Runtime latency of the model with one group pruned.

Each point exports the really shrunk model and times it (the subject's intra-op threads and timed
runs after warm-up; median, p90 and run-to-run spread). Zeros do not change dense latency, so only
structured methods have latency curves.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from explorer.errors import PlanError
from explorer.methods import get_method
from explorer.progress import Progress, no_progress
from explorer.prune import kept_channels
from explorer.runtime import LatencyStats, OrtModel, export_onnx, measure_latency
from explorer.sensitivity.cache import PointCache, ratio_key
from explorer.sensitivity.engines import engine_for
from explorer.sensitivity.engines.depgraph import StructuredEngine
from explorer.sensitivity.units import DEFAULT_RATIOS, check_ratios, check_round_to, select
from explorer.subject import Subject

__all__ = ["LATENCY_COLUMNS", "latency_curves", "time_model"]

LATENCY_COLUMNS = ["layer", "ratio", "channels_kept", "latency_ms_median", "latency_ms_p90",
                   "latency_ms_spread", "members"]


def latency_curves(subject: Subject, method: str = "l1-structured", ratios: Sequence[float] = DEFAULT_RATIOS,
                   layers: Sequence[str] | None = None, on_progress: Progress = no_progress, *,
                   round_to: int | None = None, cache: bool = True) -> pd.DataFrame:
    """Measured ONNX Runtime latency of the model with only one group pruned, per ratio.

    Each point exports the really shrunk model and times it (``subject.threads`` intra-op threads,
    ``subject.runs`` timed runs after warm-up; median, p90 and run-to-run spread). The ratio-0 row
    of every group is the dense model, timed once per call. ``round_to`` rounds kept channel counts
    up to a multiple of it (the staircase of channel alignment is then flat between multiples).

    Returns a DataFrame with columns ``layer, ratio, channels_kept, latency_ms_median,
    latency_ms_p90, latency_ms_spread, members``.

    Raises:
        PlanError: a method that removes no channels (zeros do not change dense latency), or an
            unknown group.
    """
    m = get_method(method)
    if not m.structured:
        raise PlanError(f"latency curves need a structured method: {method} only zeroes weights, which does not "
                        "change dense ONNX Runtime latency")
    ratios = check_ratios(ratios)
    round_to = check_round_to(m, round_to)
    todo = select(subject, method, layers)
    eng = engine_for(subject, m)
    assert isinstance(eng, StructuredEngine)
    store = None
    if cache:
        store = PointCache("latency", subject, method, LATENCY_COLUMNS, round_to=round_to, threads=subject.threads,
                            runs=subject.runs, machine=f"{platform.machine()}/{os.cpu_count()}/{platform.node()}")
    known = store.load() if store is not None else {}
    rk = ratio_key
    x = subject.example_input
    missing = [(g, r) for g in todo for r in [0.0, *ratios] if (g, rk(r)) not in known]
    fresh: dict[tuple[str, float], dict] = {}
    dense_stats = None
    with tempfile.TemporaryDirectory(prefix="explorer-latency-") as tmp:
        for done, (gid, ratio) in enumerate(missing, start=1):
            n = eng.channels(gid)
            if ratio == 0.0:
                if dense_stats is None:
                    dense_stats = time_model(subject.model, x, Path(tmp) / "dense.onnx", subject)
                stats, kept = dense_stats, n
            else:
                kept = kept_channels(n, ratio, round_to)
                stats = time_model(eng.pruned(gid, ratio, round_to, m), x, Path(tmp) / "pruned.onnx", subject)
            fresh[(gid, rk(ratio))] = {
                "layer": gid, "ratio": ratio, "channels_kept": kept, "latency_ms_median": stats.median_ms,
                "latency_ms_p90": stats.p90_ms, "latency_ms_spread": stats.spread_ms, "members": ",".join(todo[gid]),
            }
            on_progress(done / len(missing), f"{gid} @ {ratio:.2f}: {stats.median_ms:.3f} ms ({done}/{len(missing)})")
    if store is not None and fresh:
        store.save(fresh)
    on_progress(1.0, "done")
    known.update(fresh)
    out = pd.DataFrame([known[(g, rk(r))] for g in todo for r in [0.0, *ratios]], columns=LATENCY_COLUMNS)
    out["ratio"] = [0.0, *ratios] * len(todo)
    return out


def time_model(model: nn.Module, x: torch.Tensor, path: Path, subject: Subject) -> LatencyStats:
    """Export ``model`` to ``path`` and time it at batch 1 as the subject times everything."""
    export_onnx(model, x, path)
    return measure_latency(OrtModel(path, threads=subject.threads), x.numpy(), runs=subject.runs)
