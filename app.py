"""Pruning Explorer: the router. Page config, the shared sidebar and the page list; nothing else.

Run with ``streamlit run app.py`` (or ``pruning-explorer app``) from any working directory: page
paths are built from this file's folder.
"""

from pathlib import Path

import streamlit as st

from ui import state, widgets

HERE = Path(__file__).parent

st.set_page_config(page_title="Pruning Explorer", page_icon=":material/content_cut:", layout="wide")
state.init_state()
page = st.navigation({
    "Explore": [
        st.Page(HERE / "pages" / "model.py", title="Model", icon=":material/model_training:", default=True),
        st.Page(HERE / "pages" / "weights.py", title="Weights", icon=":material/bar_chart:"),
        st.Page(HERE / "pages" / "sensitivity.py", title="Sensitivity", icon=":material/show_chart:"),
        st.Page(HERE / "pages" / "prune.py", title="Prune", icon=":material/content_cut:"),
        st.Page(HERE / "pages" / "recover.py", title="Recover", icon=":material/healing:"),
    ],
    "Learn": [
        st.Page(HERE / "pages" / "learn.py", title="Learn", icon=":material/school:"),
    ],
    "Keep": [
        st.Page(HERE / "pages" / "export.py", title="Export", icon=":material/download:"),
    ],
})
widgets.sidebar()
page.run()
