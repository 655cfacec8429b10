"""Prune page: drag per-layer ratios, see the really pruned model's numbers update, keep a
history."""

import streamlit as st

from explorer.errors import ExplorerError
from explorer.methods import get_method
from ui import allocation, controls, live, rounding, state, widgets
from ui.metrics import accuracy_warning
from ui.state import Keys

state.ensure_router()
st.title("Prune", anchor=False)
state.show_flash()
subject = widgets.require_subject()

allocation.section(subject)
left, right = st.columns([1, 1], gap="large")
with left:
    draft = controls.prune_controls(subject)
plan = result = None
with right:
    st.caption(
        f"Measured on the pruned model exported to ONNX: accuracy on {len(subject.data.test):,} "
        "test samples, latency in ONNX Runtime. Deltas are against the dense model."
    )
    try:
        plan = draft.to_plan(subject.inventory, subject.model_spec)
        result = live.section(
            subject, st.session_state[Keys.DATA], plan
        )  # final, or drawn as it refines
    except ExplorerError as e:
        st.error(str(e))
    if plan is not None and result is not None:
        if not plan.is_empty:  # the dense model is row 0 of the history already
            state.add_history(plan.key(), draft, draft.summary(subject.inventory), result.to_dict())
        rounding.slowdown_note(subject, result)
        warning = accuracy_warning(
            result.pruned.accuracy,
            result.dense.accuracy,
            subject.dense()[1].shape[1],
            subject.data.has_labels,
        )
        if warning and not plan.is_empty:
            st.warning(warning, icon=":material/warning:")
    if plan is not None:
        methods = sorted({plan.method_of(n) for n in plan.layers} | {plan.method})
        if (
            subject.capabilities.structured_off
        ):  # a structured method is off here: nothing to say of its speed
            methods = [m for m in methods if not get_method(m).structured]
        for method in methods:
            info = get_method(method)
            (st.success if info.speeds_up_dense_cpu else st.info)(
                f"**{method}**: {info.runtime_note}"
            )

widgets.history_section(subject, plan.key() if plan is not None and result is not None else None)
