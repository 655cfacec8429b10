"""The Prune page's live numbers: the plan evaluated in a worker thread, refined in place.

A slider move starts a :class:`explorer.live.LiveRun` (the session's previous one is cancelled) and
the page draws what is known: a prediction from cached sensitivity curves, then the accuracy on the
images scored so far with its 95 % interval, the exact size, parameter and MAC counts, and at last
the full evaluation. A fragment polls the run while it goes, so the page stays responsive; when the
run is final the whole page reruns once (the history then takes the configuration). Finished
evaluations are shared by every user of the server. A model whose full evaluation is predicted to
take under ``PRUNING_EXPLORER_LIVE_INLINE_SECONDS`` (default 1.5 s) is awaited before the page is
drawn, as before: the zoo's models show their final numbers at once.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from explorer.errors import ExplorerError
from explorer.evaluate import Evaluation
from explorer.live import LiveEvaluator, LiveRun, Refinement
from explorer.plan import PruningPlan
from explorer.subject import Subject
from ui import cache, widgets
from ui.metrics import Card, cards, fmt_bytes, fmt_count
from ui.state import Keys

__all__ = ["evaluation", "evaluator", "section"]

POLL_SECONDS = 0.4  # how often the fragment redraws a running evaluation
FIRST_WAIT = 1.0  # a page run waits this long for the first measured numbers before it draws
INLINE_TIMEOUT = 120.0


def _inline_seconds() -> float:
    return float(os.environ.get("PRUNING_EXPLORER_LIVE_INLINE_SECONDS", "1.5"))


@st.cache_resource(
    show_spinner="Preparing the live evaluation (one export of the dense model)…", max_entries=8
)
def evaluator(model_spec: str, data_spec: str | None) -> LiveEvaluator:
    """One evaluator per (model, data) for the whole server; its runs share the measurement lock."""
    return LiveEvaluator(cache.subject(model_spec, data_spec), lock=cache.measure_lock())


@st.cache_resource
def _finished() -> cache.SharedResults:
    return cache.SharedResults(max_entries=1024)


def evaluation(model_spec: str, data_spec: str | None, plan: PruningPlan) -> Evaluation:
    """The final evaluation of ``plan``, waiting for it (shared by every user)."""
    key = (model_spec, data_spec, plan.key())
    found = _finished().get(key)
    if found is None:
        found = evaluator(model_spec, data_spec).evaluate(plan)
        _finished().put(key, found)
    return found


def _run(ev: LiveEvaluator, model_spec: str, data_spec: str | None, plan: PruningPlan) -> LiveRun:
    """The session's run of ``plan``: the current one, or a new one (the superseded one is
    cancelled)."""
    run: LiveRun | None = st.session_state.get(Keys.LIVE_RUN)
    if run is not None and run.plan_key == plan.key() and not run.cancelled:
        return run
    if run is not None:
        run.cancel()
    key = (model_spec, data_spec, plan.key())
    run = ev.start(plan, on_final=lambda r: _finished().put(key, r.result))
    st.session_state[Keys.LIVE_RUN] = run
    return run


def _raise(run: LiveRun) -> None:
    """Raise the run's error in this script run: a user's (``ExplorerError``, shown by the page) or
    a
    bug (where AppTest and the log see it)."""
    if run.error is not None:
        raise run.error


def partial_cards(ref: Refinement, dense: dict[str, Any]) -> list[Card]:
    """Cards of a running evaluation: measured so far, exact counts, pending timings."""
    what = "Accuracy" if ref.labels else "Agreement"
    out = []
    if ref.measured and ref.accuracy is not None and ref.interval is not None:
        lo, hi = ref.interval
        delta = 100 * (ref.accuracy - dense["accuracy"])
        out.append(
            Card(
                f"{what} (so far)",
                f"{100 * ref.accuracy:.1f} %",
                f"{delta:+.1f} pp",
                description=(
                    f"first {ref.scored} of {ref.total} images; 95 % CI"
                    f" {100 * lo:.0f}-{100 * hi:.0f} %"
                ),
                help=(
                    "Measured on the really pruned model in ONNX Runtime, on the first"
                    f" {ref.scored} of the {ref.total} evaluation images (a shuffled order: every"
                    " prefix is a uniform sample). The interval (Wilson, finite population) is"
                    f" where the accuracy on all {ref.total} images lies with 95 % confidence; it"
                    " narrows as more images are scored."
                ),
            )
        )
        loss_label = "Loss (so far)" if ref.labels else "KL from dense (so far)"
        out.append(
            Card(
                loss_label,
                f"{ref.loss:.4f}",
                f"{ref.loss - dense['loss']:+.4f}",
                "inverse",
                description=f"first {ref.scored} of {ref.total} images",
            )
        )
    elif ref.predicted_accuracy is not None:
        out.append(
            widgets.plain_card(
                f"{what} (predicted)",
                f"{100 * ref.predicted_accuracy:.1f} %",
                "from the sensitivity curves, not measured",
                help=(
                    "Dense accuracy minus the drop each pruned layer causes alone "
                    "(cached sensitivity scan): a prediction; scoring has not started."
                ),
            )
        )
    for label in ("Latency, median", "Latency, p90"):
        out.append(widgets.plain_card(label, "…", "timed after the scoring"))
    static = ref.static
    for key, label, fmt in (
        ("params_total", "Parameters", fmt_count),
        ("params_nonzero", "Nonzero params", fmt_count),
        ("macs", "MACs", fmt_count),
        ("onnx_bytes", "ONNX size", fmt_bytes),
    ):
        if key in static:
            change = static[key] - dense[key]
            rel = (
                0
                if change == 0
                else (f"{100 * change / dense[key]:+.1f} %" if dense[key] else f"{change:+,}")
            )
            out.append(
                Card(
                    label,
                    fmt(static[key]),
                    rel,
                    "inverse",
                    help=f"Exact, counted on the pruned model. Dense: {fmt(dense[key])}.",
                )
            )
    out.append(widgets.plain_card("ONNX gzipped", "…", "compressed while scoring"))
    return out


def _status(ref: Refinement | None) -> str:
    if ref is None or not ref.measured:
        return "Pruning and writing the model…"
    return (
        f"Scoring the pruned model: {ref.scored} of {ref.total} images ({ref.elapsed:.1f} s)"
        if ref.scored < ref.total
        else f"Timing latency in ONNX Runtime ({ref.elapsed:.1f} s)"
    )


def _draw_partial(run: LiveRun, dense: dict[str, Any]) -> None:
    ref = run.latest()
    st.progress(0.0 if ref is None else 0.95 * ref.scored / ref.total, text=_status(ref))
    if ref is not None:
        widgets.metric_row(partial_cards(ref, dense), per_row=2)
        if ref.predicted_accuracy is not None and ref.measured:
            st.caption(
                f"Predicted from the sensitivity curves: {100 * ref.predicted_accuracy:.1f} % "
                "(a prediction, not a measurement)."
            )


def section(subject: Subject, data_spec: str | None, plan: PruningPlan) -> Evaluation | None:
    """Draw ``plan``'s live metrics; return its final evaluation once there is one.

    Raises:
        ExplorerError: the plan does not fit the model, or the pruned model cannot be run.
    """
    model_spec = subject.model_spec
    found = _finished().get((model_spec, data_spec, plan.key()))
    if found is None:
        ev = evaluator(model_spec, data_spec)
        run = _run(ev, model_spec, data_spec, plan)
        inline = ev.predicted_seconds() < _inline_seconds()
        ref = run.wait(INLINE_TIMEOUT if inline else FIRST_WAIT, measured=not inline)
        _raise(run)
        if ref is not None and ref.final:
            found = ref.result
    if found is not None:
        widgets.metric_row(cards(found), per_row=2)
        return found
    dense = subject.dense()[0].to_dict()

    def poll() -> None:
        if run.done:
            if isinstance(run.error, ExplorerError):
                st.error(str(run.error))
                return
            _raise(run)
            st.rerun()  # final: the whole page draws it and records it in the history
        _draw_partial(run, dense)

    st.fragment(poll, run_every=POLL_SECONDS, key="prune.live")()
    return None
