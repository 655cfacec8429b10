"""Pruning Explorer: the router. Page config, the page list, the shared sidebar; nothing else.

Run with ``pruning-explorer app`` (or ``streamlit run app.py``) from any working directory: page
paths are built from this file's folder. The page list comes first, before the shared modules
(which import torch) are loaded: the navigation shows at once, even on a cold start.
"""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="Pruning Explorer", page_icon=":material/content_cut:", layout="wide")
page = st.navigation(
    {
        "Explore": [
            st.Page(
                HERE / "pages" / "model.py",
                title="Model",
                icon=":material/model_training:",
                default=True,
            ),
            st.Page(HERE / "pages" / "weights.py", title="Weights", icon=":material/bar_chart:"),
            st.Page(
                HERE / "pages" / "sensitivity.py", title="Sensitivity", icon=":material/show_chart:"
            ),
            st.Page(HERE / "pages" / "prune.py", title="Prune", icon=":material/content_cut:"),
            st.Page(HERE / "pages" / "recover.py", title="Recover", icon=":material/healing:"),
        ],
        "Learn": [
            st.Page(HERE / "pages" / "learn.py", title="Learn", icon=":material/school:"),
        ],
        "Keep": [
            st.Page(HERE / "pages" / "export.py", title="Export", icon=":material/download:"),
        ],
    }
)

from ui.serve import wait_for_imports  # noqa: E402  (after the navigation: see the docstring)

wait_for_imports()  # the server's warm-up may be importing the app's modules right now
from ui import persist, state, widgets  # noqa: E402

state.init_state()
persist.attach()
widgets.sidebar()
try:
    page.run()
finally:  # also when the page stopped or asked for a rerun: nothing the user did is lost
    persist.save()
