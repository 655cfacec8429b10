"""The session store: JSON in SQLite (nothing pickled), recent sessions newest first, the oldest
dropped beyond the limit with the files no kept session mentions; uploads and weights by content."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from explorer.errors import ExplorerError
from explorer.sessions import (
    SessionStore,
    cache_root,
    is_session_id,
    load_weights,
    new_session_id,
    store_upload,
    store_weights,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PRUNING_EXPLORER_CACHE", str(tmp_path))
    return tmp_path


def test_state_round_trips_as_json_text(cache: Path) -> None:
    store = SessionStore()
    assert store.path == cache_root() / "sessions.sqlite"
    sid = new_session_id()
    assert is_session_id(sid) and not is_session_id("../etc") and not is_session_id(None)
    state = {
        "model_spec": "zoo:digits-cnn",
        "history": [{"n": 1, "metrics": {"accuracy": 0.99}}],
        "drafts": {"zoo:digits-cnn|": {"ratios": {"features.3": 0.3}}},
    }
    store.save(sid, state, "zoo:digits-cnn · 1 configuration")
    assert store.load(sid) == {**state, "version": 1}
    raw = (
        sqlite3.connect(store.path)
        .execute("SELECT state FROM sessions WHERE id = ?", (sid,))
        .fetchone()[0]
    )
    assert (
        json.loads(raw)["history"][0]["metrics"]["accuracy"] == 0.99
    )  # plain JSON text, nothing pickled
    assert store.load("unknown-id-123") is None
    store.save(sid, {**state, "model_spec": "zoo:digits-mlp"}, "later")
    assert store.load(sid)["model_spec"] == "zoo:digits-mlp"


def test_recent_sessions_newest_first_and_pruning_drops_unreferenced_files(cache: Path) -> None:
    store = SessionStore()
    upload = store_upload(b"model bytes", "mynet.pt2")
    orphan = store_upload(b"other bytes", "old.onnx")
    ids = []
    for i in range(4):
        sid = new_session_id()
        ids.append(sid)
        state = {
            "model_spec": str(upload) if i == 3 else str(orphan) if i == 0 else "zoo:digits-cnn"
        }
        store.save(sid, state, f"session {i}")
        time.sleep(0.01)
    assert [s.id for s in store.recent(10)] == ids[::-1]
    assert [s.id for s in store.recent(10, exclude=ids[3])] == ids[2::-1]
    assert store.prune(keep=3) == 1  # session 0 goes, and the file only it pointed at
    assert store.load(ids[0]) is None
    assert upload.is_file() and not orphan.exists()


def test_uploads_and_weights_are_stored_by_content(cache: Path) -> None:
    a = store_upload(b"same", "x.npz")
    assert store_upload(b"same", "x.npz") == a and a.read_bytes() == b"same"
    assert store_upload(b"different", "x.npz") != a
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    path = store_weights(state)
    assert store_weights(state) == path and path.parent == cache / "weights"
    assert torch.equal(load_weights(path)["w"], state["w"])
    path.unlink()
    with pytest.raises(ExplorerError, match="run the recovery again"):
        load_weights(path)
