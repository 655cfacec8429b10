"""Model page: open a zoo model or your own, see its dense numbers and its prunable layers."""

import streamlit as st

from explorer.errors import ExplorerError
from explorer.models import ZOO
from ui import cache, persist, state, uploads, widgets
from ui.metrics import fmt_bytes, fmt_count
from ui.state import Keys

state.ensure_router()
st.title("Model", anchor=False)
st.caption(
    "Pick the model to prune. Every number in this app is measured on the real model, "
    "exported to ONNX and run in ONNX Runtime."
)
state.show_flash()

current = st.session_state[Keys.MODEL]
zoo = [f"zoo:{name}" for name in ZOO]
st.session_state.setdefault(Keys.MODEL_SOURCE, "Built-in (zoo)" if current in zoo else "Your own")
source = st.radio("Source", ["Built-in (zoo)", "Your own"], key=Keys.MODEL_SOURCE, horizontal=True)
with st.form("model.open", border=True):
    if source == "Built-in (zoo)":
        model = st.selectbox(
            "Zoo model",
            zoo,
            index=zoo.index(current) if current in zoo else 0,
            format_func=lambda s: f"{s}: {ZOO[s[4:]].description}",
        )
        data = None
    else:
        own = uploads.own_inputs("" if current in zoo else current, st.session_state[Keys.DATA])
    if st.form_submit_button("Open", type="primary", icon=":material/folder_open:"):
        try:
            if source != "Built-in (zoo)":
                model, data = uploads.resolve(own)
            cache.subject(model.strip(), (data or "").strip() or None)
            state.set_model(model.strip(), (data or "").strip() or None)
            st.rerun()
        except ExplorerError as e:
            st.error(str(e))

recent = persist.recent()
if recent:
    with st.expander(f"Resume a recent session ({len(recent)})", icon=":material/history:"):
        st.caption(
            "Sessions are kept on this server under the id in the page's address: a reload, a"
            " second tab or a restarted server opens the same one. Bookmark the address to come"
            " back to it."
        )
        for info in recent:
            left, right = st.columns([5, 1], vertical_alignment="center")
            left.markdown(f"**{persist.escape(info.title)}**  \n{persist.ago(info.updated)}")
            right.button(
                "Resume",
                key=f"model.resume.{info.id}",
                on_click=persist.resume,
                args=(info.id,),
                icon=":material/restore:",
                width="stretch",
            )

subject = widgets.require_subject()
dense = subject.dense()[0]
st.subheader(f"{uploads.display(subject.model_spec)}, dense", anchor=False)
st.caption(
    f"Evaluated on {uploads.display(subject.data.spec)}: {len(subject.data.test):,} test samples;"
    f" fed {subject.data.inputs}"
    + (f"; its output used: {subject.output_note}" if subject.output_note else "")
    + "."
)
acc_label = "Accuracy" if dense.labels else "Agreement with dense"
widgets.metric_row(
    [
        widgets.plain_card("Parameters", fmt_count(dense.params_total), "all layers"),
        widgets.plain_card("MACs", fmt_count(dense.macs), "per sample"),
        widgets.plain_card(acc_label, f"{100 * dense.accuracy:.2f} %", "test split"),
        widgets.plain_card(
            "Latency, median",
            f"{dense.latency_ms_median:.3f} ms",
            f"p90 {dense.latency_ms_p90:.3f} ms",
            help=(
                f"ONNX Runtime CPU, batch 1, {dense.latency_threads} thread(s), "
                f"{dense.latency_runs} timed runs after warm-up."
            ),
        ),
        widgets.plain_card(
            "ONNX size", fmt_bytes(dense.onnx_bytes), f"gzipped {fmt_bytes(dense.onnx_gzip_bytes)}"
        ),
    ],
    per_row=5,
)

st.subheader("Prunable layers", anchor=False)
st.caption(
    "Layers in one dependency group share output channels (a residual add, a concatenation...): "
    "structured methods remove the same channels from all of them. A layer in no group cannot "
    "lose output channels; unstructured methods still apply."
)
if subject.capabilities.own_graph:
    st.info(
        "Part of this graph runs in ONNX Runtime as it is:"
        f" {', '.join(subject.capabilities.ort_ops)}. Histograms, unstructured and 2:4 pruning (the"
        " weights those ops read are layers too), sensitivity, allocation for sparsity or size,"
        " evaluation and int8 work; every number is measured on your own graph with the pruned"
        " weights (MACs count only the layers torch runs). Structured methods, batch-norm"
        " recalibration and fine-tuning are off: no channel or gradient can be followed through"
        " those ops.",
        icon=":material/memory:",
    )
elif subject.capabilities.structured_off:
    st.warning(subject.capabilities.structured_off)
widgets.layer_table(subject.inventory)
widgets.page_link("prune", "Prune it", ":material/content_cut:")
