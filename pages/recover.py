"""Recover page: where the model is trained or recovered. The Prune page's plan, then a schedule
(one-shot: batch-norm recalibration and fine-tuning; or iterative, gradual, SNIP, lottery ticket,
regularised) and int8, each stage measured on its ONNX export next to the dense model."""

import pandas as pd
import streamlit as st

from explorer import figures
from explorer.errors import ExplorerError
from ui import recover, state, widgets

state.ensure_router()
st.title("Recover", anchor=False)
st.caption(
    "Pruning costs accuracy; recalibrating batch norm and fine-tuning (zeros stay zero, removed"
    " channels stay removed) win some back; int8 quantization shrinks the file further. Every row"
    " is measured on its own ONNX export in ONNX Runtime. A schedule decides when the pruning"
    " happens: once, in rounds, while training, at initialisation, or as a lottery ticket."
)
subject = widgets.require_subject()
draft = state.draft()
plan = draft.to_plan(subject.inventory, subject.model_spec)
if plan.is_empty:
    st.info("The plan prunes nothing yet: set ratios on the Prune page first.")
    widgets.page_link("prune", "Go to the Prune page", ":material/content_cut:")
    st.stop()
st.markdown(f"Plan: **{draft.summary(subject.inventory)}**")

blocked = subject.capabilities.training_off
if blocked:
    st.info(f"Only int8 here: {blocked}.")
if recover.was_interrupted():
    st.warning(
        "Cancelled: the last run stopped before it finished; nothing of it was recorded.",
        icon=":material/cancel:",
    )
recover.seed_widgets(bool(blocked))
has_train = subject.data.train is not None and not blocked
settings = recover.settings_controls(subject, blocked, has_train)

result = recover.last_run(plan, settings)
if st.button("Run", type="primary", icon=":material/healing:", key="recover.run"):
    cancel = st.empty()  # any click reruns the page, which interrupts the run
    cancel.button("Cancel", key="recover.cancel", help="Stops the run; nothing is recorded.")
    try:
        result = recover.run(subject, plan, draft, settings)
    except ExplorerError as e:
        st.error(str(e))
    cancel.empty()
if result is None:
    result = recover.latest(plan)
    if result is None:
        st.stop()
    st.caption("Showing the last run of this plan, with other settings; press Run for these.")

rows = result["rows"]
st.plotly_chart(figures.recovery_bars(rows), key="recover.bars")
keys = [
    "accuracy",
    "loss",
    "params_nonzero",
    "onnx_bytes",
    "onnx_gzip_bytes",
    "latency_ms_median",
    "latency_ms_p90",
]
st.dataframe(
    widgets.metric_table(pd.DataFrame(rows), ["stage"], keys).assign(
        note=[r["note"] for r in rows]
    ),
    hide_index=True,
    column_config=widgets.metric_columns(keys, subject.data.has_labels),
)
if result["epochs"]:
    st.plotly_chart(figures.finetune_curve(result["epochs"]), key="recover.curve")
if result["int8"]:
    q = result["int8"]
    recipe = q.get("recipe")  # a session saved before recipes were reported has none
    st.info(
        f"int8: {q['cpu']['note']}."
        + (f" Recipe **{recipe['name']}**: {recipe['summary']}." if recipe else "")
    )
if result.get("schedule"):
    recover.show_schedule(result["schedule"], plan)
st.caption(
    "Every stage is also in the Prune page's history, from which it can be compared and restored."
    " The Export page exports this recovered model (fine-tuned weights, int8) next to the plan"
    " alone."
)
widgets.page_link("export", "Export the recovered model", ":material/download:")
