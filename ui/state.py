"""Every session-state key of the app, and the helpers that read and write per-user state.

Per-user data lives only in ``st.session_state`` (never in module globals: those are shared by
every user of the server). Widgets on a page lose their value when the user switches pages, so
anything worth keeping (the chosen model, the draft plan, the history) is mirrored into the
non-widget keys below and widgets are re-seeded from it.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import streamlit as st

from explorer.inspect import Inventory
from explorer.subject import DEFAULT_MODEL
from ui.draft import Draft

__all__ = [
    "Keys",
    "add_history",
    "default_model",
    "draft",
    "ensure_router",
    "flash",
    "history",
    "init_state",
    "on_weights_layer",
    "restore",
    "seed_prune_widgets",
    "seed_weights_widgets",
    "set_draft",
    "set_model",
    "show_flash",
    "subject_id",
]


APP = Path(__file__).resolve().parents[1] / "app.py"


class Keys:
    """Session-state keys. Page-local widget keys are prefixed with the page name."""

    # Mirrored, cross-page state (not widgets).
    MODEL = "model_spec"
    DATA = "data_spec"  # None: the zoo model's own data
    DRAFTS = "drafts"  # {subject id: Draft}
    HISTORY = "history"  # list of history entries (dicts), every subject
    SCANS = "scans"  # {subject id: {"method": str, "ratios": tuple}} the last scan asked for
    FLASH = "flash"  # one-shot (kind, message) shown by the next page run
    SESSION_ID = "session.id"  # the id in the URL under which ui.persist saves this session
    SESSION_SAVED = "session.saved"  # hash of the state last saved (ui.persist writes only changes)

    # Model page widgets.
    MODEL_SOURCE = "model.source"
    MODEL_ZOO = "model.zoo"
    MODEL_SPEC_INPUT = "model.spec_input"
    MODEL_DATA_INPUT = "model.data_input"
    MODEL_UPLOAD = "model.upload_model"
    DATA_UPLOAD = "model.upload_data"
    UPLOAD_NAMES = "uploads.names"  # {spec: original file name} of the files uploaded (ui.uploads)

    # Prune page widgets.
    PRUNE_METHOD = "prune.method"
    PRUNE_SCOPE = "prune.scope"
    PRUNE_GLOBAL = "prune.global"
    PRUNE_ROUND = "prune.round_to"  # "off" or a multiple of channels (structured methods)
    PRUNE_BLOCKS = "prune.blocks"  # the whole blocks removed (names)
    PRUNE_RESTORE = "prune.restore"
    LIVE_RUN = "prune.live_run"  # the session's running evaluation (explorer.live.LiveRun)
    COMPARE_A = "prune.compare.a"
    COMPARE_B = "prune.compare.b"
    ALLOC_KIND = "prune.alloc.kind"
    ALLOC_METHOD = "prune.alloc.method"  # suffixed with the target kind
    ALLOC_VALUE = "prune.alloc.value"
    ALLOC_IMAGES = "prune.alloc.images"  # samples the curves are scanned on (0: all)

    # Weights page widgets.
    WEIGHTS_LAYER = "weights.layer"
    WEIGHTS_METHOD = "weights.method"
    WEIGHTS_RATIO = "weights.ratio"
    WEIGHTS_LOG = "weights.log"

    # Sensitivity page widgets.
    SENS_METHOD = "sensitivity.method"
    SENS_RATIOS = "sensitivity.ratios"
    SENS_HIGHLIGHT = "sensitivity.highlight"
    SENS_ROUND8 = "sensitivity.round8"

    # Recover page: the last loop run per (subject, plan, settings), and its widgets.
    RECOVER_RESULTS = "recover.results"
    RECOVER_SETTINGS = (  # {subject id: the settings of the last run}, seeds the widgets
        "recover.settings"
    )
    RECOVER_BN = "recover.bn"
    RECOVER_EPOCHS = "recover.epochs"
    RECOVER_DISTILL = "recover.distill"
    RECOVER_TEMPERATURE = "recover.temperature"
    RECOVER_ALPHA = "recover.alpha"
    RECOVER_PATIENCE = "recover.patience"
    RECOVER_INT8 = "recover.int8"
    RECOVER_SCHEDULE = "recover.schedule"

    # Export page widgets.
    EXPORT_WHAT = "export.what"  # "plan" or "recovered"
    EXPORT_UPLOAD = "export.upload"
    EXPORT_PASTE = "export.paste"

    @staticmethod
    def ratio(layer: str) -> str:
        return f"prune.ratio.{layer}"

    @staticmethod
    def schedule_option(schedule: str, option: str) -> str:
        return f"recover.schedule.{schedule}.{option}"

    @staticmethod
    def lock(layer: str) -> str:
        return f"prune.lock.{layer}"

    @staticmethod
    def skip(layer: str) -> str:
        return f"prune.skip.{layer}"


def ensure_router() -> None:
    """Make sure this run goes through app.py's ``st.navigation``; call first in every page.

    Streamlit still honours its legacy ``pages/`` folder: until some session has run app.py, a
    visitor who opens a page's URL directly (``/prune``) gets that script run alone, with no router,
    sidebar or state (AppTest's ``switch_page`` takes the same path). Then this runs app.py in
    place,
    in the same script run so no widget event is lost, and stops the stray run.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the legacy mechanism
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()


def default_model() -> str:
    """The model a new session opens: the CLI's ``--model`` (through the environment), else the
    default."""
    return os.environ.get("PRUNING_EXPLORER_MODEL") or DEFAULT_MODEL


def init_state() -> None:
    """Create the mirrored keys once per session. The model comes from the CLI's environment."""
    defaults: dict[str, Any] = {
        Keys.MODEL: default_model(),
        Keys.DATA: os.environ.get("PRUNING_EXPLORER_DATA") or None,
        Keys.UPLOAD_NAMES: {},
        Keys.DRAFTS: {},
        Keys.HISTORY: [],
        Keys.SCANS: {},
        Keys.FLASH: None,
        Keys.RECOVER_RESULTS: {},
        Keys.RECOVER_SETTINGS: {},
    }
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value


def subject_id() -> str:
    """The current model and data, as one string (keys drafts, history and scans)."""
    return f"{st.session_state[Keys.MODEL]}|{st.session_state[Keys.DATA] or ''}"


def set_model(model_spec: str, data_spec: str | None) -> None:
    """Switch the session to another model. Its drafts and history stay, keyed by model."""
    st.session_state[Keys.MODEL] = model_spec
    st.session_state[Keys.DATA] = data_spec or None


def draft() -> Draft:
    return st.session_state[Keys.DRAFTS].get(subject_id(), Draft())


def set_draft(value: Draft) -> None:
    st.session_state[Keys.DRAFTS][subject_id()] = value


def history() -> list[dict[str, Any]]:
    """History entries of the current model and data, oldest first."""
    sid = subject_id()
    return [e for e in st.session_state[Keys.HISTORY] if e["subject"] == sid]


def add_history(plan_key: str, value: Draft, summary: str, result: dict[str, Any]) -> None:
    """Record an evaluated configuration once (by plan key); later duplicates are ignored.

    Call it before the Prune page's restore picker is drawn in this run.
    """
    sid = subject_id()
    entries = st.session_state[Keys.HISTORY]
    if any(e["subject"] == sid and e["key"] == plan_key for e in entries):
        return
    metrics = {k: v for k, v in result.items() if k not in ("dense", "plan", "model", "data")}
    n = len(history()) + 1
    entries.append(
        {
            "subject": sid,
            "n": n,
            "key": plan_key,
            "draft": value.to_dict(),
            "summary": summary,
            "metrics": metrics,
        }
    )
    st.session_state[Keys.PRUNE_RESTORE] = n  # the restore picker offers the newest by default


def seed_prune_widgets(value: Draft, inventory: Inventory, force: bool = False) -> None:
    """Give the Prune page's widgets the draft's values (only missing ones unless ``force``).

    Must run before the widgets are created in this run (or inside a widget callback).
    """
    wanted: dict[str, Any] = {
        Keys.PRUNE_METHOD: value.method,
        Keys.PRUNE_SCOPE: value.scope,
        Keys.PRUNE_GLOBAL: round(100 * value.global_ratio),
        Keys.PRUNE_ROUND: value.round_to or "off",
        Keys.PRUNE_BLOCKS: list(value.removed),
    }
    for name in inventory.names:
        wanted[Keys.ratio(name)] = round(100 * value.ratio(name))
        wanted[Keys.lock(name)] = name in value.locked
        wanted[Keys.skip(name)] = name in value.skipped
    for key, v in wanted.items():
        if force or key not in st.session_state:
            st.session_state[key] = v


def restore(value: Draft, inventory: Inventory) -> None:
    """Make ``value`` the current draft and move the Prune widgets to it (a callback, or before
    widgets)."""
    set_draft(value)
    seed_prune_widgets(value, inventory, force=True)


def flash(kind: str, message: str) -> None:
    """Queue a message for the next run of any page (e.g. after a callback)."""
    st.session_state[Keys.FLASH] = (kind, message)


def show_flash() -> None:
    """Show and forget the queued message, if any."""
    item = st.session_state.get(Keys.FLASH)
    if item:
        kind, message = item
        getattr(st, kind)(message)
        st.session_state[Keys.FLASH] = None


def seed_weights_widgets(value: Draft, layer: str, force: bool = False) -> None:
    """Start the Weights page's preview at the draft's method and ratio for ``layer`` (50 % if
    0)."""
    ratio = value.ratio(layer) if value.scope == "local" else value.global_ratio
    wanted = {
        Keys.WEIGHTS_METHOD: value.method_of(layer),
        Keys.WEIGHTS_RATIO: round(100 * ratio) or 50,
    }
    for key, v in wanted.items():
        if force or key not in st.session_state:
            st.session_state[key] = v


def on_weights_layer() -> None:
    """Callback of the Weights page's layer picker: the preview keeps the method the user chose and
    starts at the draft's ratio for the new layer."""
    value, layer = draft(), st.session_state[Keys.WEIGHTS_LAYER]
    ratio = value.ratio(layer) if value.scope == "local" else value.global_ratio
    st.session_state[Keys.WEIGHTS_RATIO] = round(100 * ratio) or 50
