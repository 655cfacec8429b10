"""Sensitivity page: accuracy and loss when one layer (or dependency group) at a time is pruned."""

import streamlit as st

from explorer import figures
from explorer.errors import ExplorerError
from explorer.prune import available_methods
from explorer.sensitivity import DEFAULT_RATIOS
from ui import cache, state, widgets
from ui.state import Keys

st.title("Sensitivity", anchor=False)
st.caption("Each curve prunes one layer alone (for structured methods, one dependency group) at each ratio "
           "and measures the model on the test set. Flat curves are layers you can prune hard.")
subject = widgets.require_subject()
model, data, sid = subject.model_spec, st.session_state[Keys.DATA], state.subject_id()
scans = st.session_state[Keys.SCANS]
last = scans.get(sid, {"method": state.draft().method, "ratios": DEFAULT_RATIOS})
st.session_state.setdefault(Keys.SENS_METHOD, last["method"])
st.session_state.setdefault(Keys.SENS_RATIOS, [round(100 * r) for r in last["ratios"]])

cols = st.columns([2, 4, 1], vertical_alignment="bottom")
method = cols[0].selectbox("Method", available_methods(), key=Keys.SENS_METHOD)
ratios = cols[1].multiselect("Ratios (%)", list(range(5, 100, 5)), key=Keys.SENS_RATIOS,
                             help="Ratio 0 (the dense model) is always included.")
run = cols[2].button("Run scan", type="primary", icon=":material/play_arrow:", width="stretch",
                     disabled=not ratios)
args = {"method": method, "ratios": tuple(sorted(r / 100 for r in ratios))}
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
    st.info("Choose a method and ratios, then run the scan. Results are kept for every user of this "
            "server: the same model, data, method and ratios come back at once.")
    st.stop()
if wanted != args:
    st.caption(f"Showing the last scan ({wanted['method']}); press Run scan for the new choice.")
units = list(dict.fromkeys(frame["layer"]))
highlight = st.selectbox("Highlight a layer", ["(none)", *units], key=Keys.SENS_HIGHLIGHT)
st.plotly_chart(figures.sensitivity_curves(frame, None if highlight == "(none)" else highlight),
                key="sensitivity.chart")
st.download_button("Download CSV", frame.to_csv(index=False).encode(), file_name="sensitivity.csv",
                   mime="text/csv", icon=":material/download:")
with st.expander("Table"):
    st.dataframe(frame, hide_index=True)
