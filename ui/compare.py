"""The Prune page's comparison: two configurations of the history side by side (every metric, the
per-layer ratios, and the sensitivity curves' prediction of their accuracy against the measured
one)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from explorer.compare import metric_rows, predict_accuracy, ratio_rows
from explorer.errors import ExplorerError
from explorer.plan import PruningPlan
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.state import Keys

__all__ = ["section"]


def _plan(entry: dict[str, Any] | None, subject: Subject) -> PruningPlan:
    if entry is None:
        return PruningPlan("l1-unstructured", model=subject.model_spec)
    return Draft.from_dict(entry["draft"]).to_plan(subject.inventory, subject.model_spec)


def _ratios(plan: PruningPlan, subject: Subject) -> dict[str, float]:
    """What the plan takes from each layer: its ratios (a group at its largest), the measured
    shares for a global plan (the ranking decides them)."""
    if plan.is_empty:
        return {}
    if plan.scope == "global":
        return cache.layer_shares(subject.model_spec, st.session_state[Keys.DATA], plan.key(), plan)
    ratios = {n: r.ratio for n, r in plan.layers.items()}
    structured = {n for n in ratios if _structured(plan, n)}
    for members in subject.inventory.groups.values():
        listed = [m for m in members if m in structured]
        if listed:
            ratios.update({m: max(ratios[n] for n in listed) for m in members})
    return ratios


def _structured(plan: PruningPlan, layer: str) -> bool:
    from explorer.methods import get_method

    return get_method(plan.method_of(layer)).structured


def _prediction(
    plan: PruningPlan, ratios: dict[str, float], subject: Subject
) -> tuple[float | None, str]:
    """(predicted accuracy, why there is none) from this session's scan of the plan's method."""
    if plan.is_empty:
        return float(subject.dense()[0].accuracy), ""
    if plan.blocks:
        return None, "the plan removes whole blocks (see the Sensitivity page)"
    methods = {plan.method_of(n) for n in plan.layers}
    scan = st.session_state[Keys.SCANS].get(state.subject_id())
    if len(methods) > 1:
        return None, "no scan (the plan mixes methods)"
    method = methods.pop()
    if scan is None or scan["method"] != method:
        return None, f"no scan of {method} (Sensitivity page)"
    curves = cache.scan_if_cached(
        subject.model_spec, st.session_state[Keys.DATA], method, scan["ratios"]
    )
    if curves is None:
        return None, f"no scan of {method} (Sensitivity page)"
    predicted = predict_accuracy(ratios, curves)
    if predicted is None:
        return None, f"beyond the scan's largest ratio ({max(scan['ratios']):.0%})"
    return predicted, ""


def _formatted(row: dict[str, Any]) -> dict[str, str]:
    kind = row["kind"]

    def fmt(v: float, signed: bool = False) -> str:
        sign = "+" if signed else ""
        if kind == "int":
            return f"{v:{sign},.0f}"
        return f"{v:{sign}.{ {'pct': 2, 'ms': 3, 'float': 4}[kind] }f}"

    return {
        "metric": row["metric"],
        "A": fmt(row["A"]),
        "B": fmt(row["B"]),
        "B - A": fmt(row["B - A"], True),
    }


def section(subject: Subject, entries: list[dict[str, Any]]) -> None:
    """Two pickers and the three tables (``entries``: this model's history; row 0 is dense)."""
    st.subheader("Compare two configurations", anchor=False)
    by_n = {0: None, **{e["n"]: e for e in entries}}
    labels = {0: "#0: dense", **{e["n"]: f"#{e['n']}: {e['summary']}" for e in entries}}
    if st.session_state.get(Keys.COMPARE_A) not in labels:
        st.session_state[Keys.COMPARE_A] = entries[-2]["n"] if len(entries) > 1 else 0
    if st.session_state.get(Keys.COMPARE_B) not in labels:
        st.session_state[Keys.COMPARE_B] = entries[-1]["n"]
    left, right = st.columns(2)
    a = left.selectbox("A", list(labels), format_func=labels.__getitem__, key=Keys.COMPARE_A)
    b = right.selectbox("B", list(labels), format_func=labels.__getitem__, key=Keys.COMPARE_B)
    dense = subject.dense()[0].to_dict()
    sides = []
    try:
        for n in (a, b):
            entry = by_n[n]
            plan = _plan(entry, subject)
            ratios = _ratios(plan, subject)
            predicted, why = _prediction(plan, ratios, subject)
            sides.append((entry["metrics"] if entry else dense, ratios, predicted, why, entry))
    except ExplorerError as e:
        st.error(str(e))
        return
    (ma, ra, pa, wa, ea), (mb, rb, pb, wb, eb) = sides
    what = "accuracy" if subject.data.has_labels else "agreement"
    st.dataframe(
        pd.DataFrame([_formatted(r) for r in metric_rows(ma, mb)]),
        hide_index=True,
        key="prune.compare.metrics",
        width="stretch",
    )

    def cell(predicted: float | None, why: str, measured: float) -> tuple[str, str]:
        if predicted is None:
            return why, ""
        return f"{100 * predicted:.2f}", f"{100 * (measured - predicted):+.2f}"

    pred_a, gap_a = cell(pa, wa, ma["accuracy"])
    pred_b, gap_b = cell(pb, wb, mb["accuracy"])
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "": f"{what}, measured (%)",
                    "A": f"{100 * ma['accuracy']:.2f}",
                    "B": f"{100 * mb['accuracy']:.2f}",
                },
                {"": f"{what}, predicted from the curves (%)", "A": pred_a, "B": pred_b},
                {"": "measured - predicted (points)", "A": gap_a, "B": gap_b},
            ]
        ),
        hide_index=True,
        key="prune.compare.prediction",
        width="stretch",
    )
    recovered = [side for side, e in (("A", ea), ("B", eb)) if e and " + " in e["summary"]]
    st.caption(
        "Predicted: dense minus what each layer (or group) alone loses at its ratio on the "
        "Sensitivity "
        "page's curves; layers interact, so the measured accuracy is often lower."
        + (
            f" {' and '.join(recovered)} went through recovery after pruning: its measured "
            "accuracy is "
            "the recovered one."
            if recovered
            else ""
        )
    )
    layers = [n for n in subject.layer_names if ra.get(n) or rb.get(n)]
    if layers:
        st.dataframe(
            pd.DataFrame(ratio_rows(layers, ra, rb)),
            hide_index=True,
            key="prune.compare.ratios",
            column_config={
                c: st.column_config.NumberColumn(c, format="%.1f")
                for c in ("A (%)", "B (%)", "B - A (points)")
            },
        )
