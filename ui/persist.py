"""Nothing lost: the session's state saved on the server under an id in the page's URL.

``attach`` (app.py, every run) puts ``?session=<id>`` in the URL and, when a browser session starts
with an id the store knows (a reload, a second tab, a restarted server, a link), loads that
session's state into ``st.session_state``. ``save`` (app.py, after the page ran, whatever way it
ended) writes the state back when it changed. ``resume`` switches this tab to another saved
session (the Model page lists the recent ones).

What is kept (``explorer.sessions``: SQLite in the cache folder, JSON, nothing pickled): the model
and data specs and the uploaded files' original names (the files themselves are in the cache
folder by content hash), the draft plans, the history, the scans asked for, the recovery results
(the recovered weights by content hash) and the Recover settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import streamlit as st

from explorer.sessions import SessionInfo, SessionStore, is_session_id, new_session_id
from ui import state
from ui.state import Keys

__all__ = ["attach", "recent", "resume", "save", "session_id"]

QUERY = "session"
# Per-user keys kept, with how to write them as JSON and read them back.
_PLAIN = (
    Keys.MODEL,
    Keys.DATA,
    Keys.UPLOAD_NAMES,
    Keys.HISTORY,
    Keys.RECOVER_RESULTS,
    Keys.RECOVER_SETTINGS,
)


@st.cache_resource(show_spinner=False)
def _store() -> SessionStore:
    """The server's store (once per process); the oldest sessions beyond its limit are dropped."""
    store = SessionStore()
    store.prune()
    return store


def session_id() -> str | None:
    return st.session_state.get(Keys.SESSION_ID)


def _snapshot() -> dict[str, Any]:
    out: dict[str, Any] = {key: st.session_state.get(key) for key in _PLAIN}
    out[Keys.DRAFTS] = {
        sid: d.to_dict() for sid, d in st.session_state.get(Keys.DRAFTS, {}).items()
    }
    out[Keys.SCANS] = {
        sid: {"method": s["method"], "ratios": list(s["ratios"])}
        for sid, s in st.session_state.get(Keys.SCANS, {}).items()
    }
    return out


def _restore(saved: dict[str, Any]) -> None:
    """Put a saved state into ``st.session_state`` (drafts of methods now unknown are dropped)."""
    from explorer.errors import ExplorerError
    from ui.draft import Draft

    for key in _PLAIN:
        if key in saved and saved[key] is not None:
            st.session_state[key] = saved[key]
    drafts = {}
    for sid, raw in (saved.get(Keys.DRAFTS) or {}).items():
        try:
            drafts[sid] = Draft.from_dict(raw)
        except (ExplorerError, TypeError, ValueError):
            continue
    st.session_state[Keys.DRAFTS] = drafts
    st.session_state[Keys.SCANS] = {
        sid: {"method": s["method"], "ratios": tuple(s["ratios"])}
        for sid, s in (saved.get(Keys.SCANS) or {}).items()
    }


def _worth_keeping(snap: dict[str, Any]) -> bool:
    """A visitor who only looked at the default model leaves no session behind."""
    return bool(
        snap[Keys.HISTORY]
        or snap[Keys.DRAFTS]
        or snap[Keys.SCANS]
        or snap[Keys.RECOVER_RESULTS]
        or snap[Keys.UPLOAD_NAMES]
        or snap[Keys.MODEL] != state.default_model()
    )


def _title(snap: dict[str, Any]) -> str:
    from ui import uploads

    model = uploads.display(snap[Keys.MODEL]) or ""
    data = uploads.display(snap[Keys.DATA])
    mine = [e for e in snap[Keys.HISTORY] or [] if e["subject"] == state.subject_id()]
    text = model + (f" on {data}" if data else "")
    if mine:
        plural = "s" if len(mine) != 1 else ""
        text += f" · {len(mine)} configuration{plural}, last: {mine[-1]['summary']}"
    return text


def attach() -> None:
    """Give this browser session its id (in the URL) and, the first time, load its saved state."""
    sid = session_id()
    if sid is None:
        wanted = st.query_params.get(QUERY)
        saved = _store().load(wanted) if is_session_id(wanted) else None
        if saved is not None:
            _restore(saved)
            sid = wanted
        else:
            sid = new_session_id()
            if wanted:
                state.flash(
                    "info",
                    f"There is no saved session {wanted!r} on this server: this is a new one.",
                )
        st.session_state[Keys.SESSION_ID] = sid
    if st.query_params.get(QUERY) != sid:  # a page change may drop the query string: put it back
        st.query_params[QUERY] = sid


def save() -> None:
    """Write the session's state to the store if it changed since the last write."""
    sid = session_id()
    if sid is None:
        return
    snap = _snapshot()
    text = json.dumps(snap, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest == st.session_state.get(Keys.SESSION_SAVED) or not _worth_keeping(snap):
        return
    _store().save(sid, snap, _title(snap))
    st.session_state[Keys.SESSION_SAVED] = digest


def recent(limit: int = 8) -> list[SessionInfo]:
    """Recently used sessions of this server, newest first, this one left out."""
    return _store().recent(limit, exclude=session_id())


def resume(other: str) -> None:
    """Switch this tab to the saved session ``other`` (a callback: before any widget is drawn)."""
    saved = _store().load(other)
    if saved is None:
        state.flash("error", f"The session {other!r} is no longer on this server.")
        return
    save()  # this one is kept as it is
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    state.init_state()
    _restore(saved)
    st.session_state[Keys.SESSION_ID] = other
    st.query_params[QUERY] = other
    state.flash(
        "success", "Resumed the saved session: model, plan, history, scans and recovery results."
    )


def escape(text: str) -> str:
    """``text`` shown literally by st.markdown (layer names hold underscores and stars)."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$" else c for c in text)


def ago(seconds_since_epoch: float) -> str:
    """'3 min ago', '2 h ago', '5 days ago'."""
    delta = max(0.0, time.time() - seconds_since_epoch)
    if delta < 90:
        return "just now"
    if delta < 5400:
        return f"{delta / 60:.0f} min ago"
    if delta < 2 * 86400:
        return f"{delta / 3600:.0f} h ago"
    return f"{delta / 86400:.0f} days ago"
