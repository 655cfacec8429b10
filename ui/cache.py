"""Cached loaders shared by every session, and the progress adapter.

``subject`` is a ``st.cache_resource``: one Subject per (model, data) for the whole server, never
mutated (every plan is applied to a fresh copy). Results are ``st.cache_data`` keyed by the model
spec, data spec and the plan's content hash, so the same configuration returns at once for anyone;
scans and export bundles (which draw progress bars) are kept in a shared LRU instead.
Measurements run one at a time (a process-wide lock) so that two users never slow down each
other's latency runs.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch

from explorer import allocate as alloc
from explorer import distributed, latency
from explorer import sensitivity as sens
from explorer.bundle import zip_bundle
from explorer.distributed import Executor
from explorer.evaluate import Evaluation
from explorer.methods import get_method
from explorer.plan import PruningPlan
from explorer.progress import Progress, no_progress
from explorer.report import export_bundle
from explorer.rounding import Slowdown, explain_slowdown
from explorer.schedule_spec import ScheduleSpec
from explorer.subject import Subject
from explorer.weights import LayerView, channel_importance, layer_view, weight_stats

# The server runs many small batch-1 jobs (tracing for export, MAC counts, DepGraph) for many
# users at once: one torch intra-op thread each avoids oversubscribing the cores. Measured with
# benchmarks/live_rerun.py at load ~5.5 on 2 cores: median rerun 0.40-0.58 s with 1 thread against
# 0.70-1.03 s with 2 (torch's default here). PRUNING_EXPLORER_TORCH_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("PRUNING_EXPLORER_TORCH_THREADS", "1")))

__all__ = [
    "SharedResults",
    "block_scan",
    "bundle",
    "cached_block_scan",
    "cached_bundle",
    "cached_sensitivity",
    "cached_slowdown",
    "evaluation",
    "layer",
    "measure_lock",
    "progress_bar",
    "sensitivity",
    "slowdown",
    "stats",
    "subject",
]


# A Subject holds a model, its data and its scans' activations: a few are kept (the least recently
# used goes first), so that a long session of uploads does not keep every model it opened.
@st.cache_resource(show_spinner="Loading the model and measuring it dense…", max_entries=4)
def subject(model_spec: str, data_spec: str | None) -> Subject:
    """The shared Subject, with its dense metrics already measured."""
    s = Subject(model_spec, data_spec)
    with measure_lock():
        s.dense()
    return s


@st.cache_resource
def measure_lock() -> threading.Lock:
    return threading.Lock()


@st.cache_resource(show_spinner="Connecting to Ray…")
def executor() -> Executor:
    """Where scans evaluate their points: here, or Ray (``pruning-explorer app --workers N`` or
    ``--ray-address ADDR``, passed in the environment); one for the whole server."""
    workers = os.environ.get("PRUNING_EXPLORER_WORKERS") or None
    return distributed.executor(
        int(workers) if workers else None, os.environ.get("PRUNING_EXPLORER_RAY_ADDRESS") or None
    )


@st.cache_data(max_entries=1024, show_spinner=False)
def evaluation(
    model_spec: str, data_spec: str | None, plan_key: str, _plan: PruningPlan
) -> Evaluation:
    """``Subject.evaluate(plan)``: the really pruned model exported and measured in ONNX Runtime,
    timed alternately with the dense model."""
    s = subject(model_spec, data_spec)
    with measure_lock():
        return s.evaluate(_plan)


@st.cache_resource
def _slowdowns() -> SharedResults:
    return SharedResults(max_entries=32)


def cached_slowdown(model_spec: str, data_spec: str | None, plan_key: str) -> Slowdown | None:
    return _slowdowns().get((model_spec, data_spec, plan_key))


def slowdown(
    model_spec: str, data_spec: str | None, result: Evaluation, on_progress: Progress = no_progress
) -> Slowdown | None:
    """Why a plan measured slower than dense, and its rounded plan measured (``explorer.rounding``),
    once per plan for the whole server."""
    assert result.plan is not None
    key = (model_spec, data_spec, result.plan.key())
    found = _slowdowns().get(key)
    if found is None:
        with measure_lock():
            found = explain_slowdown(
                subject(model_spec, data_spec), result, on_progress=on_progress
            )
        _slowdowns().put(key, found)
    return found


@st.cache_data(max_entries=256, show_spinner=False)
def layer_shares(
    model_spec: str, data_spec: str | None, plan_key: str, _plan: PruningPlan
) -> dict[str, float]:
    """What a (global) plan really takes from each layer: the share of its output channels removed
    (structured methods) or of its weights zeroed (the others), measured on the pruned copy."""
    s = subject(model_spec, data_spec)
    pruned = dict(s.prune(_plan).named_modules())
    out = {}
    for info in s.inventory.layers:
        w = pruned[info.name].weight
        if get_method(_plan.method_of(info.name)).structured:
            out[info.name] = 1 - w.shape[0] / info.shape[0]
        else:
            out[info.name] = 1 - int(torch.count_nonzero(w)) / w.numel()
    return out


class SharedResults:
    """A small thread-safe LRU of finished results shared by every session.

    Used instead of ``st.cache_data`` where the work draws a progress bar: ``st.cache_data``
    would record the bar's updates and replay them into a page that no longer has the bar.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int | None = None,
        size: Callable[[Any], int] | None = None,
    ) -> None:
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._max = max_entries
        self._max_bytes, self._size = max_bytes, size
        self._bytes: dict[tuple[Any, ...], int] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Any | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        """Keep ``value``; the least recently used entries go beyond ``max_entries`` (or beyond
        ``max_bytes`` by ``size``, the newest entry always kept)."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if self._size is not None:
                self._bytes[key] = self._size(value)
            while len(self._items) > self._max or (
                self._max_bytes is not None
                and len(self._items) > 1
                and sum(self._bytes.values()) > self._max_bytes
            ):
                old, _ = self._items.popitem(last=False)
                self._bytes.pop(old, None)


@st.cache_resource
def _scans() -> SharedResults:
    return SharedResults(max_entries=64)


BUNDLE_BYTES = (
    256 * 2**20
)  # the export bundles kept for download, all together (each holds a few models)


@st.cache_resource
def _bundles() -> SharedResults:
    return SharedResults(
        max_entries=16, max_bytes=BUNDLE_BYTES, size=lambda files: sum(map(len, files.values()))
    )


def cached_sensitivity(
    model_spec: str, data_spec: str | None, method: str, ratios: tuple[float, ...]
) -> pd.DataFrame | None:
    """A finished scan of these arguments (a copy), or None if nobody has run it yet."""
    frame = _scans().get((model_spec, data_spec, method, ratios))
    return None if frame is None else frame.copy()


def sensitivity(
    model_spec: str,
    data_spec: str | None,
    method: str,
    ratios: tuple[float, ...],
    on_progress: Progress = no_progress,
) -> pd.DataFrame:
    """``explorer.sensitivity.scan``, run once per arguments for the whole server."""
    frame = cached_sensitivity(model_spec, data_spec, method, ratios)
    if frame is None:
        s = subject(model_spec, data_spec)
        try:
            frame = sens.scan(s, method, ratios, on_progress=on_progress, executor=executor())
        finally:
            sens.release(s)  # the points are on disk now; the engine's sessions need not stay
            trim()
        _scans().put((model_spec, data_spec, method, ratios), frame.copy())
    return frame


def cached_block_scan(model_spec: str, data_spec: str | None) -> pd.DataFrame | None:
    """A finished scan of whole blocks (a copy), or None if nobody has run it yet."""
    frame = _scans().get(("blocks", model_spec, data_spec))
    return None if frame is None else frame.copy()


def block_scan(
    model_spec: str, data_spec: str | None, on_progress: Progress = no_progress
) -> pd.DataFrame:
    """``explorer.sensitivity.block_scan``, run once per model and data for the whole server."""
    frame = cached_block_scan(model_spec, data_spec)
    if frame is None:
        with measure_lock():
            frame = sens.block_scan(subject(model_spec, data_spec), on_progress=on_progress)
        trim()
        _scans().put(("blocks", model_spec, data_spec), frame.copy())
    return frame


def scan_if_cached(
    model_spec: str, data_spec: str | None, method: str, ratios: tuple[float, ...]
) -> pd.DataFrame | None:
    """A scan that needs no new point: from the shared results, or read from the on-disk curves."""
    frame = cached_sensitivity(model_spec, data_spec, method, tuple(ratios))
    if frame is not None:
        return frame
    if estimate(model_spec, data_spec, method, tuple(ratios)).points:
        return None
    return sensitivity(model_spec, data_spec, method, tuple(ratios))


@st.cache_data(max_entries=256, show_spinner=False)
def _importance(model_spec: str, data_spec: str | None, name: str, method: str) -> np.ndarray:
    return channel_importance(subject(model_spec, data_spec), name, method)


# A LayerView holds a layer's weights and mask (megabytes for a large layer): 32 of them, for an
# hour.
@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def layer(
    model_spec: str, data_spec: str | None, name: str, method: str, ratio: float
) -> LayerView:
    """What ``method`` at ``ratio`` does to one layer's weights (see explorer.weights)."""
    scores = (
        _importance(model_spec, data_spec, name, method) if get_method(method).structured else None
    )
    return layer_view(subject(model_spec, data_spec), name, method, ratio, scores)


@st.cache_data(max_entries=16, show_spinner=False)
def stats(model_spec: str, data_spec: str | None) -> pd.DataFrame:
    return weight_stats(subject(model_spec, data_spec).model)


def _bundle_key(
    model_spec: str,
    data_spec: str | None,
    plan: PruningPlan,
    recovered: dict[str, Any] | None,
    names: tuple[str | None, str | None],
) -> tuple[Any, ...]:
    rec = (
        None
        if recovered is None
        else (recovered.get("weights"), (recovered.get("settings") or {}).get("int8"))
    )
    return model_spec, data_spec, plan.key(), rec, names


def cached_bundle(
    model_spec: str,
    data_spec: str | None,
    plan: PruningPlan,
    recovered: dict[str, Any] | None = None,
    names: tuple[str | None, str | None] = (None, None),
) -> dict[str, bytes] | None:
    return _bundles().get(_bundle_key(model_spec, data_spec, plan, recovered, names))


def recovered_model(subject: Subject, plan: PruningPlan, weights: str) -> torch.nn.Module:
    """The Recover page's fp32 model of ``plan``: pruned afresh, then its saved weights loaded."""
    from explorer.sessions import load_weights

    model = subject.prune(plan)
    model.load_state_dict(load_weights(weights))
    model.requires_grad_(False)
    return model.eval()


def bundle(
    model_spec: str,
    data_spec: str | None,
    plan: PruningPlan,
    on_progress: Progress = no_progress,
    recovered: dict[str, Any] | None = None,
    names: tuple[str | None, str | None] = (None, None),
) -> dict[str, bytes]:
    """The export bundle's files as bytes by file name, plus ``bundle.zip`` holding all of them.

    ``recovered``: a Recover page run (``ui.recover.run``) whose recovered weights and int8 mode
    the bundle carries instead of the plan alone. ``names``: how the bundle names the model and
    the data (uploaded files by their own names). Built once per arguments for the whole server,
    in a temporary folder removed after.
    """
    found = cached_bundle(model_spec, data_spec, plan, recovered, names)
    if found is not None:
        return found
    key = _bundle_key(model_spec, data_spec, plan, recovered, names)
    s = subject(model_spec, data_spec)
    model, recovery, quantize, mode, schedule = None, None, None, "auto", None
    if recovered is not None:
        sched = (recovered.get("settings") or {}).get("schedule")
        if (
            sched
        ):  # plan.json records the schedule (export --plan replays it), metrics.json its steps
            plan, schedule = (
                plan.with_schedule(ScheduleSpec.from_dict(sched)),
                recovered.get("schedule"),
            )
        if recovered.get("weights"):
            model, recovery = (
                recovered_model(s, plan, recovered["weights"]),
                recovered.get("recovery"),
            )
        int8 = (recovered.get("settings") or {}).get("int8")
        if int8:
            quantize, mode = "int8", int8
    with tempfile.TemporaryDirectory(prefix="explorer-export-") as tmp, measure_lock():
        files = export_bundle(
            s,
            plan,
            tmp,
            on_progress=on_progress,
            model=model,
            quantize=quantize,
            recovery=recovery,
            schedule=schedule,
            int8_mode=mode,
            model_name=names[0],
            data_name=names[1],
        )
        out = {Path(p).name: Path(p).read_bytes() for p in files.values()}
        out["bundle.zip"] = zip_bundle(files)
    trim()
    _bundles().put(key, out)
    return out


def trim() -> None:
    """Give the memory a long job freed back to the system (glibc keeps it in its heap otherwise:
    a scan's 700 MB of transient activations would stay in the server's RSS). No-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def progress_bar(text: str) -> tuple[Progress, Callable[[], None]]:
    """A ``Progress`` callback drawing a ``st.progress`` bar, and a function that removes the
    bar."""
    bar = st.progress(0.0, text=text)

    def update(fraction: float, message: str) -> None:
        bar.progress(float(np.clip(fraction, 0.0, 1.0)), text=f"{text} {message}")

    return update, bar.empty


@st.cache_data(max_entries=64, show_spinner=False)
def proxy(
    model_spec: str, data_spec: str | None, method: str, ratios: tuple[float, ...]
) -> pd.DataFrame:
    """The data-free tier of sensitivity (instant)."""
    return sens.proxy(subject(model_spec, data_spec), method, ratios)


@st.cache_data(max_entries=64, show_spinner=False, ttl=60)
def estimate(
    model_spec: str, data_spec: str | None, method: str, ratios: tuple[float, ...]
) -> sens.Estimate:
    """How long a scan will take (cached a minute: the on-disk cache may fill meanwhile)."""
    return sens.estimate(subject(model_spec, data_spec), method, ratios)


def curve_needs(
    model_spec: str, data_spec: str | None, kind: str, method: str, images: int | None = None
) -> alloc.CurveNeeds:
    """The points an allocation will scan (each on ``images`` samples; None: all): read from the
    on-disk cache on every rerun (a few ms; the model's hash is memoised), never kept, so it is
    right the moment a scan or an allocation anywhere on this server has filled the cache."""
    return alloc.curve_needs(subject(model_spec, data_spec), kind, method, curve_images=images)


@st.cache_resource
def _latency_curves() -> SharedResults:
    return SharedResults(max_entries=32)


def cached_latency_curves(
    model_spec: str,
    data_spec: str | None,
    method: str,
    ratios: tuple[float, ...],
    round_to: int | None,
) -> pd.DataFrame | None:
    return _latency_curves().get((model_spec, data_spec, method, ratios, round_to))


def latency_curves(
    model_spec: str,
    data_spec: str | None,
    method: str,
    ratios: tuple[float, ...],
    round_to: int | None,
    on_progress: Progress = no_progress,
) -> pd.DataFrame:
    """Measured per-group latency curves, once per arguments for the whole server."""
    frame = cached_latency_curves(model_spec, data_spec, method, ratios, round_to)
    if frame is None:
        with measure_lock():
            frame = latency.latency_curves(
                subject(model_spec, data_spec),
                method,
                ratios,
                on_progress=on_progress,
                round_to=round_to,
            )
        _latency_curves().put((model_spec, data_spec, method, ratios, round_to), frame)
    return frame
