"""AppTest helpers (imported by the tests here): start the app from app.py as a user does, open a
page.

The repo root goes on sys.path so tests can import ``ui`` as the running app does (streamlit puts
app.py's folder there); ``st.cache_resource`` is shared by every AppTest in this process, like the
sessions of one server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def open_app(page: str | None = None, timeout: float = 60) -> AppTest:
    """A fresh session on ``pages/<page>.py`` (the Model page when None), checked for exceptions."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    """Metric label -> displayed value."""
    return {m.label: m.value for m in at.metric}
