"""Recover page: where the model is trained or recovered. The Prune page's plan, then a schedule
(one-shot: batch-norm recalibration and fine-tuning; or iterative, gradual, SNIP, lottery ticket,
regularised) and int8, each stage measured on its ONNX export next to the dense model."""

import pandas as pd
import streamlit as st

from explorer import figures
from explorer.errors import ExplorerError
from explorer.loop import INT8_MODES
from explorer.recover import batchnorm_layers
from explorer.schedules import SCHEDULES
from ui import recover, state, widgets
from ui.state import Keys

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
schedule = st.selectbox(
    "Schedule",
    list(SCHEDULES),
    key=Keys.RECOVER_SCHEDULE,
    disabled=not has_train,
    format_func=lambda n: f"{n}: {SCHEDULES[n].summary}",
    help=(
        "When to prune: once, in rounds, while training, at initialisation, as a lottery "
        "ticket, or after sparsity-inducing training. Schedules other than one-shot train."
    ),
)
if schedule != "one-shot":
    spec = recover.schedule_controls(schedule)
    int8 = st.selectbox(
        "int8 quantization",
        ["off", *INT8_MODES],
        key=Keys.RECOVER_INT8,
        help="auto: dynamic (MatMul/Gemm) for models without convolutions, static QDQ otherwise.",
    )
    settings = {
        "recalibrate": False,
        "epochs": 0,
        "distill": False,
        "temperature": 2.0,
        "alpha": 0.5,
        "patience": None,
        "int8": None if int8 == "off" else int8,
        "schedule": spec.to_dict(),
    }
else:
    has_bn = bool(batchnorm_layers(subject.model))
    cols = st.columns(3)
    bn = cols[0].checkbox(
        "Recalibrate BN",
        key=Keys.RECOVER_BN,
        disabled=not has_bn or bool(blocked),
        help=(
            "Re-estimate the batch-norm running statistics on the training split (seconds)."
            if has_bn
            else "This model has no batch norm."
        ),
    )
    epochs = cols[1].slider(
        "Fine-tuning epochs",
        0,
        30,
        key=Keys.RECOVER_EPOCHS,
        disabled=not has_train,
        help=blocked or (None if has_train else "This data has no training split."),
    )
    int8 = cols[2].selectbox(
        "int8 quantization",
        ["off", *INT8_MODES],
        key=Keys.RECOVER_INT8,
        help="auto: dynamic (MatMul/Gemm) for models without convolutions, static QDQ otherwise.",
    )
    distill = cols[1].toggle(
        "Distil from dense",
        key=Keys.RECOVER_DISTILL,
        disabled=not epochs,
        help=(
            "Fine-tune towards the dense model's outputs (knowledge distillation) as well as the"
            " labels."
        ),
    )
    temperature = cols[1].number_input(
        "Temperature", 1.0, 10.0, step=0.5, key=Keys.RECOVER_TEMPERATURE, disabled=not distill
    )
    alpha = cols[1].number_input(
        "Distillation weight", 0.0, 1.0, step=0.1, key=Keys.RECOVER_ALPHA, disabled=not distill
    )
    patience = cols[0].number_input(
        "Early stop (patience)",
        0,
        30,
        key=Keys.RECOVER_PATIENCE,
        disabled=not epochs or subject.data.val is None,
        help=(
            "Stop after this many epochs without a better validation score; 0: never. "
            "The best epoch is kept."
            if subject.data.val
            else "This data has no validation split: every epoch runs, the last one is kept."
        ),
    )
    settings = {
        "recalibrate": bn and has_bn and not blocked,
        "epochs": epochs if has_train else 0,
        "distill": distill and bool(epochs),
        "temperature": temperature,
        "alpha": alpha,
        "patience": (patience or None) if subject.data.val is not None else None,
        "int8": None if int8 == "off" else int8,
    }

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
