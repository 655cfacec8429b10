"""Cached loaders shared by every session, and the progress adapter.

``subject`` is a ``st.cache_resource``: one Subject per (model, data) for the whole server, never
mutated (every plan is applied to a fresh copy). Results are ``st.cache_data`` keyed by the model
spec, data spec and the plan's content hash, so the same configuration returns at once for anyone.
Measurements run one at a time (a process-wide lock) so that two users never slow down each
other's latency runs.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from explorer import sensitivity as sens
from explorer.bundle import zip_bundle
from explorer.plan import PruningPlan
from explorer.progress import Progress
from explorer.report import export_bundle
from explorer.subject import Subject
from explorer.prune import get_method
from explorer.weights import LayerView, channel_importance, layer_view, weight_stats

__all__ = ["bundle", "evaluation", "layer", "progress_bar", "sensitivity", "stats", "subject"]


@st.cache_resource(show_spinner="Loading the model and measuring it dense…", max_entries=8)
def subject(model_spec: str, data_spec: str | None) -> Subject:
    """The shared Subject, with its dense metrics already measured."""
    s = Subject(model_spec, data_spec)
    with _measure_lock():
        s.dense()
    return s


@st.cache_resource
def _measure_lock() -> threading.Lock:
    return threading.Lock()


@st.cache_data(max_entries=1024, show_spinner=False)
def evaluation(model_spec: str, data_spec: str | None, plan_key: str, _plan: PruningPlan) -> dict[str, Any]:
    """``Subject.evaluate(plan)``: the really pruned model exported and measured in ONNX Runtime."""
    s = subject(model_spec, data_spec)
    with _measure_lock():
        return s.evaluate(_plan)


@st.cache_data(max_entries=64, show_spinner=False)
def sensitivity(model_spec: str, data_spec: str | None, method: str, ratios: tuple[float, ...],
                _on_progress: Progress) -> pd.DataFrame:
    """``explorer.sensitivity.scan`` (progress reported only when it really runs)."""
    s = subject(model_spec, data_spec)
    return sens.scan(s, method, ratios, on_progress=_on_progress)


@st.cache_data(max_entries=256, show_spinner=False)
def _importance(model_spec: str, data_spec: str | None, name: str, p: int) -> np.ndarray:
    return channel_importance(subject(model_spec, data_spec), name, p)


@st.cache_data(max_entries=256, show_spinner=False)
def layer(model_spec: str, data_spec: str | None, name: str, method: str, ratio: float) -> LayerView:
    """What ``method`` at ``ratio`` does to one layer's weights (see explorer.weights)."""
    m = get_method(method)
    scores = _importance(model_spec, data_spec, name, m.norm_p) if m.norm_p is not None else None
    return layer_view(subject(model_spec, data_spec), name, method, ratio, scores)


@st.cache_data(max_entries=16, show_spinner=False)
def stats(model_spec: str, data_spec: str | None) -> pd.DataFrame:
    return weight_stats(subject(model_spec, data_spec).model)


@st.cache_data(max_entries=16, show_spinner=False)
def bundle(model_spec: str, data_spec: str | None, plan_key: str, _plan: PruningPlan,
           _on_progress: Progress) -> dict[str, bytes]:
    """The export bundle's files as bytes by file name, plus ``bundle.zip`` holding all of them."""
    s = subject(model_spec, data_spec)
    with tempfile.TemporaryDirectory(prefix="explorer-export-") as tmp, _measure_lock():
        files = export_bundle(s, _plan, tmp, on_progress=_on_progress)
        out = {Path(p).name: Path(p).read_bytes() for p in files.values()}
        out["bundle.zip"] = zip_bundle(files)
    return out


def progress_bar(text: str) -> tuple[Progress, Callable[[], None]]:
    """A ``Progress`` callback drawing a ``st.progress`` bar, and a function that removes the bar."""
    bar = st.progress(0.0, text=text)

    def update(fraction: float, message: str) -> None:
        bar.progress(float(np.clip(fraction, 0.0, 1.0)), text=f"{text} {message}")

    return update, bar.empty
