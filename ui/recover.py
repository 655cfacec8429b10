"""Streamlit glue of the Recover page: run the loop with a progress bar, keep its numbers per user.

A finished run is kept in the session (``ui.persist`` saves it on the server): its table, its
fine-tuning curve, its settings, and the recovered fp32 weights (in the cache folder by content
hash), from which the Export page builds the recovered bundle. A run that was interrupted (Cancel,
or any other click meanwhile) records nothing and says so on the next run of the page.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import streamlit as st

from explorer.loop import run_loop
from explorer.plan import PruningPlan
from explorer.sessions import store_weights
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.state import Keys

__all__ = ["DEFAULTS", "last_run", "latest", "run", "seed_widgets", "was_interrupted"]

DEFAULTS: dict[str, Any] = {"recalibrate": True, "epochs": 5, "distill": False, "temperature": 2.0, "alpha": 0.5,
                            "patience": None, "int8": None}
_RUNNING = "recover.running"  # set while a run is under way; left set when the run was interrupted


def _plan_key(plan: PruningPlan) -> str:
    """The plan's key whatever its ``model`` field says (a file's name or its path here)."""
    return replace(plan, model=None).key()


def _key(plan: PruningPlan, settings: dict[str, Any]) -> str:
    return f"{state.subject_id()}|{_plan_key(plan)}|{sorted(settings.items())}"


def seed_widgets(blocked: bool) -> None:
    """Start the page's widgets at the settings of this model's last run (the defaults before one)."""
    last = st.session_state[Keys.RECOVER_SETTINGS].get(state.subject_id(), {})
    s = {**DEFAULTS, **({"recalibrate": False, "epochs": 0} if blocked else {}), **last}
    for key, value in ((Keys.RECOVER_BN, s["recalibrate"]), (Keys.RECOVER_EPOCHS, s["epochs"]),
                       (Keys.RECOVER_DISTILL, s["distill"]), (Keys.RECOVER_TEMPERATURE, float(s["temperature"])),
                       (Keys.RECOVER_ALPHA, float(s["alpha"])), (Keys.RECOVER_PATIENCE, s["patience"] or 0),
                       (Keys.RECOVER_INT8, s["int8"] or "off")):
        st.session_state.setdefault(key, value)


def was_interrupted() -> bool:
    """Whether the last run of this session stopped before it finished (then forgets it)."""
    return st.session_state.pop(_RUNNING, None) is not None


def last_run(plan: PruningPlan, settings: dict[str, Any]) -> dict[str, Any] | None:
    """This user's result of the loop for this plan and these settings, if it ran."""
    return st.session_state[Keys.RECOVER_RESULTS].get(_key(plan, settings))


def latest(plan: PruningPlan) -> dict[str, Any] | None:
    """The most recent finished run of this plan on this model, whatever its settings."""
    prefix = f"{state.subject_id()}|{_plan_key(plan)}|"
    runs = [r for k, r in st.session_state[Keys.RECOVER_RESULTS].items() if k.startswith(prefix)]
    return max(runs, key=lambda r: r.get("finished", 0.0), default=None)


def run(subject: Subject, plan: PruningPlan, draft: Draft, settings: dict[str, Any]) -> dict[str, Any]:
    """Run the loop (a progress bar while it runs) and record every stage in the session history.

    Pressing any button while it runs (Cancel) interrupts the run; nothing is recorded then, and
    ``was_interrupted`` tells the next run of the page.
    """
    st.session_state[_RUNNING] = _key(plan, settings)
    update, done = cache.progress_bar("Recovering:")
    try:
        result = run_loop(subject, plan, on_progress=update, **settings)
    finally:
        cache.trim()
    done()
    weights = None
    if result.recovery is not None and result.model is not None:
        weights = str(store_weights(result.model.state_dict()))
    out = {"rows": result.table(), "epochs": result.epochs, "stopped": result.stopped, "int8": result.int8,
           "settings": dict(settings), "plan": plan.to_dict(), "recovery": result.recovery, "weights": weights,
           "summary": draft.summary(subject.inventory), "finished": time.time()}
    summary = draft.summary(subject.inventory)
    for stage in result.stages[1:]:  # the dense model is the history's row 0 already
        name = "" if stage.name == "pruned" else f" + {stage.name}"
        state.add_history(f"{plan.key()}|{stage.name}|{sorted(settings.items())}", draft, summary + name,
                          stage.metrics)
    st.session_state[Keys.RECOVER_RESULTS][_key(plan, settings)] = out
    st.session_state[Keys.RECOVER_SETTINGS][state.subject_id()] = dict(settings)
    st.session_state.pop(_RUNNING, None)
    return out
