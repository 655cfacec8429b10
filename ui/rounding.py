"""The Prune page's note on a structured plan that measured slower than dense: which layers' widths
cost it, and the rounded plan with its measured latency, one button away."""

from __future__ import annotations

import streamlit as st

from explorer.evaluate import Evaluation
from explorer.methods import get_method
from explorer.plan import PruningPlan
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.state import Keys

__all__ = ["slowdown_note"]


def _use(plan: PruningPlan, subject: Subject) -> None:
    state.restore(Draft.from_plan(plan, subject.inventory, subject.blocks), subject.inventory)
    state.flash("success", "The sliders now hold the rounded plan.")


def slowdown_note(subject: Subject, result: Evaluation) -> None:
    """When ``result``'s plan removes channels and measured slower than dense in every round: say
    so, name the groups whose widths cost it, and offer the rounded plan (measured)."""
    plan, speedup = result.plan, result.speedup
    if plan is None or speedup is None or not speedup.slower:
        return
    if not any(get_method(plan.method_of(n)).structured for n in plan.layers):
        return
    model, data = subject.model_spec, st.session_state[Keys.DATA]
    found = cache.cached_slowdown(model, data, plan.key())
    if found is None:
        update, done = cache.progress_bar("Slower than dense; timing the widths of each group:")
        found = cache.slowdown(model, data, result, update)
        done()
    if found is None:
        return
    head, cause, offer = found.lines()
    st.warning(
        f"**{head[0].upper()}{head[1:]}.** {cause[0].upper()}{cause[1:]}.", icon=":material/speed:"
    )
    if found.rounded_plan is not None:
        st.markdown(f"{offer[0].upper()}{offer[1:]}.")
        st.button(
            "Use the rounded plan",
            key="prune.use_rounded",
            on_click=_use,
            args=(found.rounded_plan, subject),
            icon=":material/straighten:",
            type="primary",
        )
