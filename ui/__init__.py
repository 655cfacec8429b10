"""Streamlit glue shared by the pages: session-state keys, cached loaders, reusable widgets.

Only this package and the pages import streamlit; ``explorer/`` never does.
"""
