"""The server process of ``pruning-explorer app``: streamlit's own CLI, started the app's way.

Two things happen before streamlit serves anything:

- Streamlit is told that this app routes with ``st.navigation``. Left alone, it sees the
  ``pages/`` folder next to app.py and, until app.py's ``st.navigation`` has run in a session (on a
  cold start, after torch is imported), shows its legacy page list built from that folder
  (``app, export, learn, ...``) over a blank page.
- A background thread starts importing the heavy libraries (torch, Torch-Pruning, ONNX) and loads
  and measures the model the app opens with, while the server starts and the browser connects:
  the first visitor gets a page with numbers in seconds instead of waiting for all of it in turn.
  A session's script waits for those imports (``wait_for_imports``) before it imports the app's
  modules: ``explorer`` imports its submodules from its ``__init__``, and two threads importing
  such a package at once can meet a partly initialised module (an ImportError on the first page
  of a browser that connects early).

Started by ``explorer.cli.app_command`` as ``python -c ... <app folder> run app.py --flags``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
import threading
import time

from streamlit.runtime.pages_manager import PagesManager

__all__ = ["main", "wait_for_imports"]

_LOG = logging.getLogger(__name__)
_IMPORTED = threading.Event()  # set while no warm-up is importing (also when none was started)
_IMPORTED.set()


def wait_for_imports() -> None:
    """Return once the warm-up has imported the app's modules (at once when there is none)."""
    _IMPORTED.wait()


def _import_app_modules() -> None:
    """Import torch, then every module of ``ui`` (and with them ``explorer``), in this thread."""
    try:
        import torch  # noqa: F401  (the bulk of a cold start)
        from streamlit import runtime

        while not runtime.exists():  # ui's st.cache_* decorators look for the server's runtime
            time.sleep(0.05)
        import ui

        for info in pkgutil.iter_modules(ui.__path__):
            importlib.import_module(f"ui.{info.name}")
    finally:
        _IMPORTED.set()


def _warm() -> None:
    """Import the libraries and load the app's first model into the shared cache."""
    try:
        _import_app_modules()
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
        _IMPORTED.clear()
        threading.Thread(target=_warm, name="explorer-warm-up", daemon=True).start()
    from streamlit.web.cli import main as streamlit_main

    sys.argv = ["streamlit", *argv]
    streamlit_main(prog_name="streamlit")
