"""Streamlit glue of the Learn page: experiment results shared by every session, and the hand-over
of an experiment's configuration to the Prune page."""

from __future__ import annotations

import streamlit as st

from explorer import sensitivity as sens
from explorer.learn import EXPERIMENTS, LearnResult, run_experiment
from explorer.progress import Progress, no_progress
from ui import cache, state, uploads
from ui.draft import Draft
from ui.state import Keys

__all__ = ["continue_in_prune", "continue_label", "finished", "run"]


@st.cache_resource
def _results() -> cache.SharedResults:
    return cache.SharedResults(max_entries=len(EXPERIMENTS))


def finished(key: str) -> LearnResult | None:
    """The result of an experiment someone already ran on this server, if any."""
    return _results().get((key,))


def run(key: str, on_progress: Progress = no_progress) -> LearnResult:
    """Run an experiment once for the whole server (experiments are deterministic given the
    seed)."""
    result = finished(key)
    if result is None:
        subject = cache.subject(EXPERIMENTS[key].model, None)
        with cache.measure_lock():  # timings of concurrent sessions would disturb each other
            try:
                result = run_experiment(key, subject, on_progress)
            finally:
                sens.release(subject)  # "Layers differ" scans: its engine need not stay
                cache.trim()
        _results().put((key,), result)
    return result


def continue_label(result: LearnResult) -> tuple[str, str]:
    """The hand-over button's label and help: it says when it switches the model."""
    current = st.session_state[Keys.MODEL]
    if result.model == current and st.session_state[Keys.DATA] is None:
        return (
            "Continue in the Prune page",
            "Loads this experiment's configuration as the Prune page's plan.",
        )
    return (
        f"Continue in the Prune page with {result.model}",
        (
            f"Switches the model from {uploads.display(current)} to {result.model} (the"
            " experiment's model) and loads its configuration; your plan and history of the"
            " current model are kept, and the Model page opens it again."
        ),
    )


def continue_in_prune(result: LearnResult) -> None:
    """Open the experiment's model with its configuration as the Prune page's draft (before the
    Prune page's widgets exist in this run: call it, then switch page). Says when the model changes.
    """
    assert result.plan is not None
    previous, previous_data = st.session_state[Keys.MODEL], st.session_state[Keys.DATA]
    state.set_model(result.model, None)
    subject = cache.subject(result.model, None)
    restored = Draft.from_plan(result.plan, subject.inventory, subject.blocks)
    state.restore(restored, subject.inventory)
    title = EXPERIMENTS[result.key].title
    if (previous, previous_data) == (result.model, None):
        state.flash("info", f"Loaded the configuration of the Learn experiment “{title}”.")
    else:
        state.flash(
            "warning",
            f"Switched the model from {uploads.display(previous)} to {result.model}, the model of"
            f" the Learn experiment “{title}”, and loaded its configuration. Your plan and history"
            f" of {uploads.display(previous)} are kept: open it again on the Model page.",
        )
