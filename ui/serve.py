"""The server process of ``pruning-explorer app``: streamlit's own CLI, started the app's way.

Two things happen before streamlit serves anything:

- Streamlit is told that this app routes with ``st.navigation``. Left alone, it sees the
  ``pages/`` folder next to app.py and, until app.py's ``st.navigation`` has run in a session (on a
  cold start, after torch is imported), shows its legacy page list built from that folder
  (``app, export, learn, ...``) over a blank page.
- A background thread starts importing the heavy libraries (torch, Torch-Pruning, ONNX) and loads
  and measures the model the app opens with, while the server starts and the browser connects:
  the first visitor gets a page with numbers in seconds instead of waiting for all of it in turn.

Started by ``explorer.cli.app_command`` as ``python -c ... <app folder> run app.py --flags``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from streamlit.runtime.pages_manager import PagesManager

__all__ = ["main"]

_LOG = logging.getLogger(__name__)


def _warm() -> None:
    """Import the libraries and load the app's first model into the shared cache."""
    try:
        import torch  # noqa: F401  (the bulk of a cold start)
        from streamlit import runtime

        import explorer.subject  # noqa: F401

        while not runtime.exists():  # st.cache_* need the server's runtime
            time.sleep(0.05)
        from explorer.subject import DEFAULT_MODEL
        from ui import cache

        model = os.environ.get("PRUNING_EXPLORER_MODEL") or DEFAULT_MODEL
        cache.subject(model, os.environ.get("PRUNING_EXPLORER_DATA") or None)
    except Exception as e:  # the first page shows the error itself, with its context
        _LOG.info("warm-up of the first model failed: %s", e)


def main(argv: list[str]) -> None:
    """Serve: ``argv`` are streamlit's arguments (``run app.py --server.port N ...``)."""
    PagesManager.uses_pages_directory = False
    if os.environ.get("PRUNING_EXPLORER_WARM", "1") != "0":
        threading.Thread(target=_warm, name="explorer-warm-up", daemon=True).start()
    from streamlit.web.cli import main as streamlit_main

    sys.argv = ["streamlit", *argv]
    streamlit_main(prog_name="streamlit")
