"""Sensitivity page: accuracy and loss when one layer (or dependency group) at a time is pruned; a
data-free tier first, an ETA before the scan, and measured latency curves for structured methods."""

from collections.abc import Iterable

import streamlit as st

from explorer import allocate as alloc
from explorer import figures
from explorer.errors import ExplorerError
from explorer.methods import available_methods, get_method
from explorer.sensitivity import DEFAULT_RATIOS
from ui import blocks, cache, state, widgets
from ui.state import Keys


def _percent(ratios: Iterable[float]) -> list[int]:
    return [round(100 * r) for r in ratios]


def _allocation_ratios(method: str) -> None:
    st.session_state[Keys.SENS_RATIOS] = _percent(alloc.curve_ratios(get_method(method)))


state.ensure_router()
st.title("Sensitivity", anchor=False)
st.caption(
    "Each curve prunes one layer alone (for structured methods, one dependency group) at each ratio"
    " and measures the model on the test set. Flat curves are layers you can prune hard."
)
subject = widgets.require_subject()
layers_tab, blocks_tab = st.tabs(["Layers and groups", "Whole blocks"])
with blocks_tab:  # drawn first: the layers tab stops early until a scan is run
    blocks.section(subject)
with layers_tab:
    model, data, sid = subject.model_spec, st.session_state[Keys.DATA], state.subject_id()
    scans = st.session_state[Keys.SCANS]
    last = scans.get(sid, {"method": state.draft().method, "ratios": DEFAULT_RATIOS})
    st.session_state.setdefault(Keys.SENS_METHOD, last["method"])
    st.session_state.setdefault(Keys.SENS_RATIOS, _percent(last["ratios"]))

    cols = st.columns([1.6, 3.6, 1.1, 1.3], vertical_alignment="bottom")
    method = cols[0].selectbox(
        "Method",
        available_methods(),
        key=Keys.SENS_METHOD,
        format_func=widgets.method_label(subject.inventory),
    )
    ratios = cols[1].multiselect(
        "Ratios (%)",
        sorted({*range(5, 100, 5), *_percent(alloc.UNSTRUCTURED_RATIOS)}),
        key=Keys.SENS_RATIOS,
        help="Ratio 0 (the dense model) is always included.",
    )
    run = cols[2].button(
        "Run scan",
        type="primary",
        icon=":material/play_arrow:",
        width="stretch",
        disabled=not ratios,
    )
    cols[3].button(
        "Allocation's ratios",
        key="sensitivity.allocation_ratios",
        width="stretch",
        on_click=_allocation_ratios,
        args=(method,),
        help="The ratios the Prune page's automatic allocation scans with this method: scan them"
        " here and it starts from these curves.",
    )
    args = {"method": method, "ratios": tuple(sorted(r / 100 for r in ratios))}
    eta_slot = st.empty()  # under the row: filled once the estimate is timed
    widgets.data_note(method, subject)
    if get_method(method).structured and subject.capabilities.structured_off:
        st.info(f"**{method}** is off for this model: {subject.capabilities.structured_off}.")
        st.stop()
    if not ratios:
        st.stop()

    try:
        with st.expander(
            "Instant, data-free: how much weight magnitude each ratio removes",
            expanded=sid not in scans,
        ):
            st.plotly_chart(
                figures.proxy_curves(cache.proxy(model, data, method, args["ratios"])),
                key="sensitivity.proxy",
            )
            st.caption(
                "A magnitude proxy (what Sparsify showed): no data is read. Large removed"
                " magnitude at a small ratio hints at a sensitive layer; the scan below"
                " measures it."
            )
        eta = cache.estimate(model, data, method, args["ratios"])
        eta_slot.caption(
            "All points are cached: the scan returns at once."
            if eta.points == 0
            else (
                f"Scan: {eta.points} points, about {eta.seconds:.0f} s ({eta.cached} cached;"
                f" one evaluation {1000 * eta.seconds_per_evaluation:.0f} ms with the"
                f" {eta.engine} engine)."
            )
        )
    except ExplorerError as e:
        st.error(str(e))

    wanted = args if run else scans.get(sid)
    frame = None
    if wanted is not None:
        frame = cache.cached_sensitivity(model, data, wanted["method"], wanted["ratios"])
        if frame is None:
            update, done = cache.progress_bar("Scanning:")
            try:
                frame = cache.sensitivity(model, data, wanted["method"], wanted["ratios"], update)
            except ExplorerError as e:
                st.error(str(e))
            done()
        if frame is not None:
            scans[sid] = wanted
    if frame is None:
        st.info(
            "Run the scan for measured curves. Results are kept for every user of this server"
            " (and on disk): the same model, data, method and ratios come back at once."
        )
        st.stop()
    if wanted != args:
        st.caption(
            f"Showing the last scan ({wanted['method']}); press Run scan for the new choice."
        )
    units = list(dict.fromkeys(frame["layer"]))
    highlight = st.selectbox("Highlight a layer", ["(none)", *units], key=Keys.SENS_HIGHLIGHT)
    st.plotly_chart(
        figures.sensitivity_curves(frame, None if highlight == "(none)" else highlight),
        key="sensitivity.chart",
    )
    st.download_button(
        "Download CSV",
        frame.to_csv(index=False).encode(),
        file_name="sensitivity.csv",
        mime="text/csv",
        icon=":material/download:",
    )
    with st.expander("Table"):
        st.dataframe(frame, hide_index=True)

    if get_method(wanted["method"]).structured:
        st.subheader("Latency curves", anchor=False)
        st.caption(
            "Measured ONNX Runtime latency of the model with only one group pruned, per ratio,"
            " as a share of the dense latency timed alternately with it (bars: the range of the"
            " rounds). Steps come from channel counts: kernels run fastest at some widths, so"
            " fewer channels is not always faster."
        )
        round8 = st.toggle("Round kept channels to multiples of 8", key=Keys.SENS_ROUND8)
        round_to = 8 if round8 else None
        curves = cache.cached_latency_curves(
            model, data, wanted["method"], wanted["ratios"], round_to
        )
        if curves is None and st.button(
            "Measure latency curves", icon=":material/timer:", key="sensitivity.latency"
        ):
            update, done = cache.progress_bar("Timing:")
            try:
                curves = cache.latency_curves(
                    model, data, wanted["method"], wanted["ratios"], round_to, update
                )
            except ExplorerError as e:
                st.error(str(e))
            done()
        if curves is not None:
            st.plotly_chart(figures.latency_curves(curves), key="sensitivity.latency_chart")
