"""The app's sessions kept on the server: SQLite in the cache folder, plain JSON, nothing pickled.

A session is what one user built (the model and data by their specs and user-facing names, the
draft plan, the history, the scans asked for, the recovery results) under an id the app puts in
the page's URL: a reload, a second tab or a restarted server opens the same session again.

Files a session points at live in the cache folder too, by content hash, so that they survive a
restart and two uploads of one file are stored once:

- ``uploads/<hash>/<name>``: files uploaded as model or data (``store_upload``);
- ``weights/<hash>.pt``: recovered (fine-tuned) weights, a state dict read back with
  ``torch.load(weights_only=True)`` (``store_weights`` / ``load_weights``).

Pure Python and sqlite3 (no streamlit); ``ui.persist`` is the app's glue. The cache root is
``explorer.sensitivity.cache_dir()`` (``$PRUNING_EXPLORER_CACHE`` or ``~/.cache/pruning-explorer``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explorer.errors import ExplorerError

__all__ = [
    "SessionInfo",
    "SessionStore",
    "cache_root",
    "is_session_id",
    "load_weights",
    "new_session_id",
    "store_upload",
    "store_weights",
    "uploads_dir",
]

SCHEMA_VERSION = 1
MAX_SESSIONS = 500  # the oldest beyond this are dropped (with files no kept session points at)
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def cache_root() -> Path:
    """The cache folder shared with the sensitivity curves."""
    from explorer.sensitivity import cache_dir

    return cache_dir()


def uploads_dir() -> Path:
    return cache_root() / "uploads"


def new_session_id() -> str:
    return secrets.token_urlsafe(12)


def is_session_id(text: str | None) -> bool:
    """Whether ``text`` has the form of a session id (anything else in a URL is ignored)."""
    return bool(text) and bool(_ID.match(str(text)))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def store_upload(data: bytes, name: str) -> Path:
    """Keep an uploaded file as ``uploads/<content hash>/<name>`` and return its path.

    ``name`` must already be a safe file name (no folders). The same content under the same
    name is written once.
    """
    path = uploads_dir() / _digest(data) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def store_weights(state_dict: dict[str, Any]) -> Path:
    """Save a state dict as ``weights/<content hash>.pt`` (tensors only) and return its path."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    data = buf.getvalue()
    path = cache_root() / "weights" / f"{_digest(data)}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def load_weights(path: str | Path) -> dict[str, Any]:
    """A state dict saved by ``store_weights`` (``weights_only=True``: nothing is unpickled).

    Raises:
        ExplorerError: the file is gone (the cache was cleared) or unreadable.
    """
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise ExplorerError(
            f"the recovered weights {Path(path).name} cannot be read ({e}); run the recovery again"
        ) from None


@dataclass(frozen=True)
class SessionInfo:
    """One row of the recent-sessions list."""

    id: str
    title: str
    created: float
    updated: float


class SessionStore:
    """Sessions by id in one SQLite file (``<cache>/sessions.sqlite`` unless ``path`` is given).

    Safe across threads and processes: every call opens its own connection (WAL journal, a busy
    timeout). The state of a session is one JSON text column; nothing is pickled.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_root() / "sessions.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created REAL NOT NULL, "
                "updated REAL NOT NULL, title TEXT NOT NULL, state TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # a transaction: committed on success, rolled back on an exception
                yield db
        finally:
            db.close()

    def load(self, session_id: str) -> dict[str, Any] | None:
        """The state saved under ``session_id``; None: unknown id, or another schema's state."""
        with self._connect() as db:
            row = db.execute("SELECT state FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        try:
            state = json.loads(row[0])
        except ValueError:
            return None
        return state if isinstance(state, dict) and state.get("version") == SCHEMA_VERSION else None

    def save(self, session_id: str, state: dict[str, Any], title: str) -> None:
        """Insert or replace the session's state (a JSON object; ``version`` is set here)."""
        text = json.dumps(
            {**state, "version": SCHEMA_VERSION}, allow_nan=True, separators=(",", ":")
        )
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO sessions (id, created, updated, title, state) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated = excluded.updated, title = excluded.title, "
                "state = excluded.state",
                (session_id, now, now, title, text),
            )

    def recent(self, limit: int = 10, exclude: str | None = None) -> list[SessionInfo]:
        """The most recently used sessions, newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, title, created, updated FROM sessions WHERE id != ? "
                "ORDER BY updated DESC LIMIT ?",
                (exclude or "", limit),
            ).fetchall()
        return [SessionInfo(*row) for row in rows]

    def delete(self, session_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def prune(self, keep: int = MAX_SESSIONS) -> int:
        """Drop all but the ``keep`` most recent sessions, then the upload and weight files that no
        kept session mentions. Returns the number of sessions dropped."""
        with self._connect() as db:
            old = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM sessions ORDER BY updated DESC LIMIT -1 OFFSET ?", (keep,)
                ).fetchall()
            ]
            db.executemany("DELETE FROM sessions WHERE id = ?", [(i,) for i in old])
            states = [r[0] for r in db.execute("SELECT state FROM sessions").fetchall()]
        if old:
            self._drop_unreferenced(states)
        return len(old)

    def _drop_unreferenced(self, states: list[str]) -> None:
        text = "\n".join(states)
        root = cache_root()
        for folder in (root / "uploads").glob("*") if (root / "uploads").is_dir() else ():
            if folder.is_dir() and folder.name not in text:
                _remove_tree(folder)
        for file in (root / "weights").glob("*.pt") if (root / "weights").is_dir() else ():
            if file.stem not in text:
                file.unlink(missing_ok=True)


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
