"""Latency against width: the measured ONNX Runtime latency of the model with one group pruned.

For each group, every width asked for is exported (the really shrunk model) and all of them are
timed in one interleaved window together with the dense model (``explorer.runtime``): rounds of a
few runs each, the order rotating from round to round. A point's ``latency_share`` is the median
over the rounds of its latency over the dense model's in the same round, with the lowest and
highest round (``latency_share_low``/``_high``): ratios that a busy machine does not fake. Zeros
do not change dense latency, so only structured methods have latency curves.

Kernels do not get faster channel by channel: ONNX Runtime's blocked (NCHWc) convolutions work on
blocks of channels, so a width just below a multiple of the block can be slower than the multiple
(the staircase), and a width that is no multiple at all can be slower than the dense model.
:func:`fast_multiple` is the block this CPU uses.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from explorer.errors import PlanError
from explorer.methods import get_method
from explorer.onnx_template import write_onnx
from explorer.progress import Progress, no_progress
from explorer.prune import kept_channels
from explorer.runtime import (
    MIN_ROUNDS,
    LatencyStats,
    OrtModel,
    Speedup,
    measure_latency,
    rounds_for,
    speedup_of,
    time_interleaved,
)
from explorer.sensitivity.cache import PointCache, ratio_key
from explorer.sensitivity.engines import engine_for
from explorer.sensitivity.engines.depgraph import StructuredEngine
from explorer.sensitivity.units import DEFAULT_RATIOS, check_ratios, check_round_to, select
from explorer.subject import Subject

__all__ = ["LATENCY_COLUMNS", "fast_multiple", "latency_curves", "time_with_dense"]

LATENCY_COLUMNS = [
    "layer",
    "ratio",
    "channels_kept",
    "latency_ms_median",
    "latency_ms_p90",
    "latency_ms_spread",
    "members",
    "dense_ms_median",
    "latency_share",
    "latency_share_low",
    "latency_share_high",
]
CURVE_ROUNDS = MIN_ROUNDS  # rounds of a group's window (every width of the group in each round)


def fast_multiple(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """The channel multiple this CPU's dense convolution kernels run fast at: 16 with AVX-512
    (ONNX Runtime's MLAS blocks NCHWc convolutions by 16 channels there), 8 otherwise (blocks of 8
    with AVX2, and a common SIMD width elsewhere). The measured widths decide where it matters."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return 8
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return 16 if "avx512f" in flags else 8


def time_with_dense(
    subject: Subject,
    models: Sequence[nn.Module],
    rounds: int = CURVE_ROUNDS,
    folder: str | Path | None = None,
) -> list[Speedup]:
    """Each of ``models`` against the dense model, all timed in one interleaved window.

    Returns one :class:`Speedup` per model (dense over that model, per round of the window).
    """
    x = subject.example_input
    with tempfile.TemporaryDirectory(prefix="explorer-latency-") as tmp:
        where = Path(folder or tmp)
        sessions = []
        for i, m in enumerate(models):  # the exporter's bytes, from the dense export's template
            write_onnx(subject, m, where / f"width{i}.onnx")
            sessions.append(OrtModel(where / f"width{i}.onnx", threads=subject.threads))
        rounds, per_round = rounds_for(subject.runs, rounds)
        times = time_interleaved([subject.dense_session(), *sessions], x.numpy(), rounds, per_round)
    return [speedup_of(times, 0, i + 1, subject.threads) for i in range(len(models))]


def _row(
    gid: str,
    ratio: float,
    kept: int,
    members: str,
    speedup: Speedup | None,
    dense: LatencyStats | None = None,
) -> dict:
    if speedup is None:  # the dense model itself
        assert dense is not None
        return {
            "layer": gid,
            "ratio": ratio,
            "channels_kept": kept,
            "latency_ms_median": dense.median_ms,
            "latency_ms_p90": dense.p90_ms,
            "latency_ms_spread": dense.spread_ms,
            "members": members,
            "dense_ms_median": dense.median_ms,
            "latency_share": 1.0,
            "latency_share_low": 1.0,
            "latency_share_high": 1.0,
        }
    share = speedup.latency_share
    return {
        "layer": gid,
        "ratio": ratio,
        "channels_kept": kept,
        "latency_ms_median": speedup.pruned.median_ms,
        "latency_ms_p90": speedup.pruned.p90_ms,
        "latency_ms_spread": speedup.pruned.spread_ms,
        "members": members,
        "dense_ms_median": speedup.dense.median_ms,
        "latency_share": share.value,
        "latency_share_low": share.low,
        "latency_share_high": share.high,
    }


def latency_curves(
    subject: Subject,
    method: str = "l1-structured",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    on_progress: Progress = no_progress,
    *,
    round_to: int | None = None,
    cache: bool = True,
) -> pd.DataFrame:
    """Measured ONNX Runtime latency of the model with only one group pruned, per ratio.

    Every ratio of a group is timed in one window with the dense model (``subject.threads``
    intra-op threads, ``subject.runs`` timed runs of each model in all): ``latency_share`` is the
    median of the per-round shares of the dense latency, ``latency_share_low``/``_high`` their
    range. The ratio-0 row of every group is the dense model (share 1). ``round_to`` rounds kept
    channel counts up to a multiple of it (the staircase is then flat between multiples).

    Returns a DataFrame with columns :data:`LATENCY_COLUMNS`.

    Raises:
        PlanError: a method that removes no channels (zeros do not change dense latency), or an
            unknown group.
    """
    m = get_method(method)
    if not m.structured:
        raise PlanError(
            f"latency curves need a structured method: {method} only zeroes weights, which does "
            "not "
            "change dense ONNX Runtime latency"
        )
    ratios = check_ratios(ratios)
    round_to = check_round_to(m, round_to)
    todo = select(subject, method, layers)
    eng = engine_for(subject, m)
    assert isinstance(eng, StructuredEngine)
    store = None
    if cache:
        store = PointCache(
            "latency",
            subject,
            method,
            LATENCY_COLUMNS,
            round_to=round_to,
            threads=subject.threads,
            runs=subject.runs,
            timing=f"interleaved-{CURVE_ROUNDS}",
            machine=f"{platform.machine()}/{os.cpu_count()}/{platform.node()}",
        )
    known = store.load() if store is not None else {}
    rk = ratio_key
    fresh: dict[tuple[str, float], dict] = {}
    groups = [g for g in todo if any((g, rk(r)) not in known for r in [0.0, *ratios])]
    start = time.perf_counter()
    for done, gid in enumerate(groups):
        n = eng.channels(gid)
        members = ",".join(todo[gid])
        missing = [r for r in ratios if (gid, rk(r)) not in known]
        by_width: dict[int, list[float]] = {}
        for r in missing:
            by_width.setdefault(kept_channels(n, r, round_to), []).append(r)
        widths = [w for w in by_width if w < n]
        eta = (
            f", ~{(time.perf_counter() - start) / done * (len(groups) - done):.0f} s left"
            if done
            else ""
        )
        on_progress(
            done / max(len(groups), 1),
            f"{gid}: timing {len(widths)} width(s) with the dense model"
            f" ({done + 1}/{len(groups)}{eta})",
        )
        models = [eng.pruned(gid, by_width[w][0], round_to, m) for w in widths]
        timed = time_with_dense(subject, models) if models else []
        speedups = dict(zip(widths, timed, strict=True))
        dense = None
        for w, rs in by_width.items():
            for r in rs:
                if w in speedups:
                    fresh[(gid, rk(r))] = _row(gid, r, w, members, speedups[w])
                else:  # rounding kept every channel: the dense model
                    dense = dense or measure_latency(
                        subject.dense_session(), subject.example_input.numpy(), runs=subject.runs
                    )
                    fresh[(gid, rk(r))] = _row(gid, r, w, members, None, dense)
        if (gid, 0.0) not in known:
            stats = (
                next(iter(speedups.values())).dense
                if speedups
                else (
                    dense
                    or measure_latency(
                        subject.dense_session(), subject.example_input.numpy(), runs=subject.runs
                    )
                )
            )
            fresh[(gid, 0.0)] = _row(gid, 0.0, n, members, None, stats)
    if store is not None and fresh:
        store.save(fresh)
    on_progress(1.0, "done")
    known.update(fresh)
    out = pd.DataFrame(
        [known[(g, rk(r))] for g in todo for r in [0.0, *ratios]], columns=LATENCY_COLUMNS
    )
    out["ratio"] = [0.0, *ratios] * len(todo)
    out["channels_kept"] = out["channels_kept"].astype(int)
    return out
