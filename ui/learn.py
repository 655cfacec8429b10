"""Streamlit glue of the Learn page: experiment results shared by every session, and the hand-over
of an experiment's configuration to the Prune page."""

from __future__ import annotations

import streamlit as st

from explorer.learn import EXPERIMENTS, LearnResult, run_experiment
from explorer.progress import Progress, no_progress
from ui import cache, state
from ui.draft import Draft

__all__ = ["continue_in_prune", "finished", "run"]


@st.cache_resource
def _results() -> cache.SharedResults:
    return cache.SharedResults(max_entries=len(EXPERIMENTS))


def finished(key: str) -> LearnResult | None:
    """The result of an experiment someone already ran on this server, if any."""
    return _results().get((key,))


def run(key: str, on_progress: Progress = no_progress) -> LearnResult:
    """Run an experiment once for the whole server (experiments are deterministic given the seed)."""
    result = finished(key)
    if result is None:
        subject = cache.subject(EXPERIMENTS[key].model, None)
        with cache.measure_lock():  # timings of concurrent sessions would disturb each other
            result = run_experiment(key, subject, on_progress)
        _results().put((key,), result)
    return result


def continue_in_prune(result: LearnResult) -> None:
    """Open the experiment's model with its configuration as the Prune page's draft (before the
    Prune page's widgets exist in this run: call it, then switch page)."""
    assert result.plan is not None
    state.set_model(result.model, None)
    subject = cache.subject(result.model, None)
    state.restore(Draft.from_plan(result.plan, subject.inventory), subject.inventory)
    state.flash("info", f"Loaded the configuration of the Learn experiment “{EXPERIMENTS[result.key].title}”.")
