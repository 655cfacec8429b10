"""Learn page: a short primer drawn from the model's own weights, and nine experiments that test the
usual claims about pruning on a real model, each measured when you press its button."""

import streamlit as st

from explorer import figures
from explorer.learn import EXPERIMENTS, scope_figure, scope_sparsity
from ui import cache, learn, state, uploads, widgets

state.ensure_router()
st.title("Learn", anchor=False)
state.show_flash()
subject = widgets.require_subject()
data = st.session_state[state.Keys.DATA]

with st.expander("Primer: what pruning removes, drawn from this model's weights", expanded=True):
    layer = next(
        (info.name for info in subject.inventory.layers if info.group), subject.layer_names[0]
    )
    st.markdown(
        "**Unstructured** pruning sets single weights to zero: the smallest in magnitude (L1) or"
        " random ones. The tensor keeps its shape, so a dense CPU kernel does the same work."
        " **Structured** pruning removes whole output channels (and the matching inputs of the"
        f" next layers): the layer really shrinks. Below, layer `{layer}` of"
        f" `{uploads.display(subject.model_spec)}` at 50%: red cells are the weights that go, blue"
        " ones stay."
    )
    cols = st.columns(2)
    cols[0].plotly_chart(
        figures.mask_heatmap(cache.layer(subject.model_spec, data, layer, "l1-unstructured", 0.5)),
        key="learn.mask.unstructured",
    )
    cols[0].caption("Unstructured (L1): zeros scattered over the whole tensor.")
    if subject.inventory[layer].group:
        cols[1].plotly_chart(
            figures.mask_heatmap(
                cache.layer(subject.model_spec, data, layer, "l1-structured", 0.5)
            ),
            key="learn.mask.structured",
        )
        cols[1].caption("Structured (L1): whole rows, i.e. output channels, go.")
    st.markdown(
        "A **mask** records which weights stay. **Local** scope gives every layer the same ratio;"
        " **global** scope ranks all weights together, so layers whose weights are small lose more."
        " At 70% on this model:"
    )
    st.plotly_chart(scope_figure(scope_sparsity(subject, 0.7)), key="learn.scope")

st.subheader("Experiments", anchor=False)
st.caption(
    "Each button runs a real experiment on a zoo model (under a minute on 2 cores; cached"
    " afterwards). The text is written from the measured numbers: where a claim does not hold, it"
    " says so."
)
for key, experiment in EXPERIMENTS.items():
    with st.container(border=True):
        st.markdown(f"**{experiment.title}** — {experiment.claim}  \n`{experiment.model}`")
        result = learn.finished(key)
        if result is None and st.button("Run the experiment", key=f"learn.run.{key}"):
            update, done = cache.progress_bar(f"{experiment.title}:")
            result = learn.run(key, update)
            done()
        if result is not None:
            verdict = {
                True: "Holds on this model.",
                False: "Does not hold on this model.",
                None: "",
            }[result.holds]
            st.plotly_chart(result.figure, key=f"learn.figure.{key}")
            st.markdown(f"**{verdict}** {result.text}")
            st.caption(f"Measured in {result.seconds:.1f} s.")
            if result.plan is not None:
                label, note = learn.continue_label(result)
                if st.button(label, key=f"learn.continue.{key}", help=note):
                    learn.continue_in_prune(result)
                    st.switch_page(widgets.PAGES["prune"])
