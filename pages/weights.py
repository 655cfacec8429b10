"""Weights page: what a method at a ratio removes from one layer, and every layer's statistics."""

import streamlit as st

from explorer import figures
from explorer.errors import ExplorerError
from explorer.methods import available_methods, get_method
from explorer.weights import NEAR_ZERO
from ui import cache, state, widgets
from ui.state import Keys

state.ensure_router()
st.title("Weights", anchor=False)
st.caption(
    "Preview one layer pruned alone: which weights (or output channels) the method removes. The"
    " preview starts at the Prune page's method and ratio for the layer and does not change the"
    " plan."
)
subject = widgets.require_subject()
names = subject.layer_names
draft = state.draft()
st.session_state.setdefault(Keys.WEIGHTS_LAYER, names[0])
state.seed_weights_widgets(draft, st.session_state[Keys.WEIGHTS_LAYER])

cols = st.columns([2, 2, 3, 1.2], vertical_alignment="bottom")
layer = cols[0].selectbox("Layer", names, key=Keys.WEIGHTS_LAYER, on_change=state.on_weights_layer)
method = cols[1].selectbox(
    "Method",
    available_methods(),
    key=Keys.WEIGHTS_METHOD,
    format_func=widgets.method_label(subject.inventory),
)
ratio = cols[2].slider(
    "Ratio to preview",
    0,
    95,
    step=1,
    key=Keys.WEIGHTS_RATIO,
    format="%d %%",
    help=f"The Prune page's plan has this layer at {draft.ratio(layer):.0%}.",
)
log_y = cols[3].toggle(
    "log y", key=Keys.WEIGHTS_LOG, help="Logarithmic count axis for the histogram."
)

off = get_method(method).structured and subject.capabilities.structured_off
widgets.data_note(method, subject)
if off:
    st.info(f"**{method}** is off for this model: {off}. The histogram shows the dense layer.")
try:
    view = cache.layer(
        subject.model_spec,
        st.session_state[Keys.DATA],
        layer,
        "l1-unstructured" if off else method,
        0.0 if off else ratio / 100,
    )
except ExplorerError as e:
    st.error(str(e))
    view = None
if view is not None:
    st.plotly_chart(figures.weight_histogram(view, log_y=log_y), key="weights.histogram")
    if get_method(method).structured and not off:
        st.plotly_chart(figures.channel_bars(view), key="weights.channels")
        st.caption(
            "Structured methods rank a layer's output channels by the norm of everything its"
            " dependency group holds for that channel (weights of coupled layers and batch norm"
            " too), so a removed channel can have a larger own weight norm than a kept one."
        )
    st.plotly_chart(figures.mask_heatmap(view), key="weights.mask")

st.subheader("Every layer, dense", anchor=False)
st.dataframe(
    cache.stats(subject.model_spec, st.session_state[Keys.DATA]),
    hide_index=True,
    column_config={
        "weights": st.column_config.NumberColumn("weights", format="localized"),
        **{
            c: st.column_config.NumberColumn(c, format="%.4f")
            for c in ("mean", "std", "min", "max")
        },
        "near_zero": st.column_config.NumberColumn(
            "near zero",
            format="percent",
            help=f"Share of weights with |w| below {NEAR_ZERO:.0%} of the layer's largest |w|",
        ),
    },
)
