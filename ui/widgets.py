"""Small widgets several pages share: the model guard, metric rows, the sidebar, the history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from explorer import figures
from explorer.errors import ExplorerError
from explorer.inspect import Inventory
from explorer.methods import get_method
from explorer.methods.calibration import SAMPLES as CALIBRATION_SAMPLES
from explorer.metricspec import fmt_bytes, spec
from explorer.plan import PruningPlan
from explorer.subject import Subject
from ui import cache, compare, state, uploads
from ui.draft import Draft
from ui.metrics import Card
from ui.state import Keys

__all__ = [
    "history_frame",
    "history_section",
    "import_plan",
    "layer_table",
    "metric_columns",
    "metric_row",
    "metric_table",
    "page_link",
    "plain_card",
    "require_subject",
    "sidebar",
]

PAGES = {
    "model": "pages/model.py",
    "weights": "pages/weights.py",
    "sensitivity": "pages/sensitivity.py",
    "prune": "pages/prune.py",
    "export": "pages/export.py",
    "learn": "pages/learn.py",
    "recover": "pages/recover.py",
}


def page_link(name: str, label: str, icon: str | None = None) -> None:
    st.page_link(PAGES[name], label=label, icon=icon)


def require_subject() -> Subject:
    """The session's Subject; on a load error shows it with a link to the Model page and stops."""
    try:
        return cache.subject(st.session_state[Keys.MODEL], st.session_state[Keys.DATA])
    except ExplorerError as e:
        st.error(str(e))
        page_link("model", "Choose another model", ":material/model_training:")
        st.stop()
        raise  # unreachable: st.stop() raises


CARD_WIDTH = 196  # px: "390,890" and "+0.259 ms within noise" fit; narrower pages wrap the cards


def metric_row(cards: list[Card], per_row: int = 3) -> None:
    """Draw ``cards`` as ``st.metric``s of one width, as many to a row as the page has room for
    (``per_row`` at most): a narrow window wraps them instead of cutting their numbers off."""
    with st.container(horizontal=True, gap="small", width=per_row * (CARD_WIDTH + 12)):
        for card in cards:
            st.metric(
                card.label,
                card.value,
                card.delta,
                delta_color=card.delta_color,
                help=card.help or None,
                delta_description=card.description or None,
                delta_arrow=card.arrow,
                border=True,
                width=CARD_WIDTH,
            )


def metric_table(frame: pd.DataFrame, first: list[str], keys: list[str]) -> pd.DataFrame:
    """``frame``'s columns ``first`` then the metrics ``keys``, scaled and formatted for
    :func:`metric_columns` (fractions in percent, sizes as text)."""
    out = frame[first].copy()
    for key in keys:
        s = spec(key)
        out[key] = frame[key].map(fmt_bytes) if s.unit == "bytes" else frame[key] * s.scale
    return out


def metric_columns(keys: list[str], labels: bool = True) -> dict[str, Any]:
    """``st.dataframe`` column settings of the metrics ``keys``, from ``explorer.metricspec``."""
    out: dict[str, Any] = {}
    for key in keys:
        s = spec(key)
        if s.unit == "bytes":
            out[key] = st.column_config.TextColumn(s.column_label(labels), help=s.help)
        else:
            out[key] = st.column_config.NumberColumn(
                s.column_label(labels), format=s.column_format, help=s.describe(labels)
            )
    return out


def method_label(inventory: Inventory) -> Callable[[str], str]:
    """Selectbox labels: structured methods say so where the model cannot lose channels."""

    def label(method: str) -> str:
        off = inventory.structured_error and get_method(method).structured
        return f"{method} (off for this model)" if off else method

    return label


def data_note(method: str, subject: Subject) -> None:
    """Say which data a data-aware method reads (nothing for the others)."""
    m = get_method(method)
    found = subject.data.calibration()
    if not m.needs_data or found is None:
        return
    split, name = found
    used = min(len(split), CALIBRATION_SAMPLES)
    caveat = " (the evaluation data itself: its numbers are optimistic)" if name == "test" else ""
    st.caption(
        f":material/dataset: **{method}** {m.data_note}: here {used} samples of the {name} "
        f"split{caveat}."
    )


def plain_card(label: str, value: str, note: str | None = None, help: str = "") -> Card:
    """A card without a change: ``note`` is shown in gray under the value."""
    return Card(label, value, note, "off", "", help, "off")


def layer_table(inventory: Inventory) -> None:
    """The prunable layers with shapes, parameters, MACs and dependency groups."""
    frame = pd.DataFrame([layer.to_dict() for layer in inventory.layers])
    frame["shape"] = frame["shape"].map(lambda s: " x ".join(map(str, s)))
    frame["group"] = frame["group"].fillna("")
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "name": "layer",
            "type": "type",
            "shape": "weight shape",
            "params": st.column_config.NumberColumn("params", format="localized"),
            "macs": st.column_config.NumberColumn("MACs per sample", format="localized"),
            "out_channels": st.column_config.NumberColumn("output channels"),
            "group": st.column_config.TextColumn(
                "dependency group", help="Named by its first layer"
            ),
            "note": st.column_config.TextColumn("note", width="large"),
        },
    )


def sidebar() -> None:
    """The shared sidebar: which model is open and what the current draft prunes."""
    with st.sidebar:
        st.caption("Model")
        st.code(uploads.display(st.session_state[Keys.MODEL]), language=None)
        if st.session_state[Keys.DATA]:
            st.caption("Data")
            st.code(uploads.display(st.session_state[Keys.DATA]), language=None)


def history_frame(entries: list[dict[str, Any]], dense: dict[str, Any]) -> pd.DataFrame:
    """One row per configuration (row 0: dense): the numbers the history table and Pareto plot
    show."""
    rows = [{"n": 0, "summary": "dense", **dense}]
    rows += [{"n": e["n"], "summary": e["summary"], **e["metrics"]} for e in entries]
    return pd.DataFrame(rows)


def _restore(entries: list[dict[str, Any]], subject: Subject) -> None:
    n = st.session_state[Keys.PRUNE_RESTORE]
    entry = next(e for e in entries if e["n"] == n)
    state.restore(Draft.from_dict(entry["draft"]), subject.inventory)
    state.flash("success", f"Restored configuration #{n}: {entry['summary']}")


def history_section(subject: Subject, current_key: str | None) -> None:
    """Table and Pareto plots of every configuration tried on this model, and a restore control."""
    entries = state.history()
    st.subheader("History of this session", anchor=False)
    if not entries:
        st.caption("Every configuration you evaluate is kept here; move a slider to start.")
        return
    frame = history_frame(entries, subject.dense()[0].to_dict())
    current = next((e["n"] for e in entries if e["key"] == current_key), None)
    st.plotly_chart(figures.pareto(frame, current), key="prune.pareto")
    keys = [
        "accuracy",
        "loss",
        "latency_ms_median",
        "latency_ms_p90",
        "params_total",
        "params_nonzero",
        "macs",
        "onnx_bytes",
        "onnx_gzip_bytes",
    ]
    st.dataframe(
        metric_table(frame, ["n", "summary"], keys),
        hide_index=True,
        column_config={
            "n": st.column_config.NumberColumn("#", help="0 is the dense model"),
            "summary": st.column_config.TextColumn("configuration", width="medium"),
            **metric_columns(
                keys, labels=bool(frame["labels"].iloc[0]) if "labels" in frame else True
            ),
        },
    )
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    labels = {e["n"]: f"#{e['n']}: {e['summary']}" for e in entries}
    if st.session_state.get(Keys.PRUNE_RESTORE) not in labels:
        st.session_state[Keys.PRUNE_RESTORE] = entries[-1]["n"]
    left.selectbox(
        "Configuration to restore",
        list(labels),
        format_func=labels.__getitem__,
        key=Keys.PRUNE_RESTORE,
    )
    right.button(
        "Restore",
        on_click=_restore,
        args=(entries, subject),
        icon=":material/restore:",
        width="stretch",
    )
    compare.section(subject, entries)


def import_plan(raw: str | bytes, subject: Subject, data_spec: str | None) -> str:
    """Validate a plan JSON against ``subject``, measure it, and make it the session's draft.

    Side effects: the draft, the Prune widgets and the history of this session change.

    Returns:
        A one-line summary of the restored configuration.

    Raises:
        ExplorerError: the JSON is not a valid plan, or does not fit this model.
    """
    imported = PruningPlan.from_json(raw)
    restored = Draft.from_plan(imported, subject.inventory, subject.blocks)
    fitted = restored.to_plan(subject.inventory, subject.model_spec)
    from ui import live  # ui.live draws with these widgets

    result = live.evaluation(subject.model_spec, data_spec, fitted)
    state.restore(restored, subject.inventory)
    summary = restored.summary(subject.inventory)
    state.add_history(fitted.key(), restored, summary, result.to_dict())
    if imported.model not in (None, subject.model_spec):
        summary += f" (made for {imported.model}; its layers fit this model)"
    return summary
