"""Streamlit glue of the Recover page: run the loop with a progress bar, keep its numbers per user."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.loop import run_loop
from explorer.plan import PruningPlan
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.state import Keys

__all__ = ["last_run", "run"]


def _key(plan: PruningPlan, settings: dict[str, Any]) -> str:
    return f"{state.subject_id()}|{plan.key()}|{sorted(settings.items())}"


def last_run(plan: PruningPlan, settings: dict[str, Any]) -> dict[str, Any] | None:
    """This user's result of the loop for this plan and these settings, if it ran."""
    return st.session_state[Keys.RECOVER_RESULTS].get(_key(plan, settings))


def run(subject: Subject, plan: PruningPlan, draft: Draft, settings: dict[str, Any]) -> dict[str, Any]:
    """Run the loop (a progress bar while it runs) and record every stage in the session history.

    Pressing any button while it runs (Cancel) interrupts the run; nothing is recorded then.
    """
    update, done = cache.progress_bar("Recovering:")
    result = run_loop(subject, plan, on_progress=update, **settings)
    done()
    out = {"rows": result.table(), "epochs": result.epochs, "stopped": result.stopped, "int8": result.int8}
    summary = draft.summary(subject.inventory)
    for stage in result.stages[1:]:  # the dense model is the history's row 0 already
        name = "" if stage.name == "pruned" else f" + {stage.name}"
        state.add_history(f"{plan.key()}|{stage.name}|{sorted(settings.items())}", draft, summary + name,
                          stage.metrics)
    st.session_state[Keys.RECOVER_RESULTS][_key(plan, settings)] = out
    return out
