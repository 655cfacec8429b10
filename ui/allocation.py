"""The Prune page's "start from an automatic allocation": target picker, predicted vs verified
accuracy, the plan handed to the sliders, and a Pareto front of allocations for several targets."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer import allocate as alloc
from explorer import figures
from explorer import sensitivity as sens
from explorer.errors import ExplorerError
from explorer.methods import available_methods, get_method
from explorer.plan import PruningPlan
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.metrics import accuracy_warning
from ui.state import Keys

__all__ = ["section"]

_FRONT = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_SUBSETS = (32, 64, 128, 256)  # samples the curves may be scanned on, below all of them


@st.cache_resource
def _results() -> cache.SharedResults:
    return cache.SharedResults(max_entries=64)


def _run(subject: Subject, key: tuple[Any, ...], work: Any) -> Any:
    """Run ``work(progress)`` once per key for the whole server, with a progress bar."""
    found = _results().get(key)
    if found is None:
        update, done = cache.progress_bar("Allocating:")
        with cache.measure_lock():  # measured latency must not overlap another session's timing
            try:
                found = work(update)
            finally:
                sens.release(subject)  # the scan's engine (sessions, activations) need not stay
                cache.trim()
        done()
        _results().put(key, found)
    return found


def _use(plan: PruningPlan, subject: Subject) -> None:
    state.restore(Draft.from_plan(plan, subject.inventory, subject.blocks), subject.inventory)
    state.flash("success", "The sliders now hold the automatic allocation: edit it from here.")


def _summary(a: alloc.Allocation, labelled: bool, n_classes: int) -> str:
    what = "accuracy" if labelled else "agreement"
    verified = (
        "not verified"
        if a.verified_accuracy is None
        else f"verified {100 * a.verified_accuracy:.2f}%"
    )
    text = (
        f"Achieved **{100 * a.achieved:.1f}%** {a.target.kind_spec.achieved_unit(a.size_metric)} "
        f"({'met' if a.met else 'missed'}, measured after {a.rounds} round(s))."
    )
    if a.speedup is not None:
        share = a.speedup.latency_share
        text += (
            f" Timed alternately with the dense model in {a.speedup.rounds} rounds: median"
            f" {100 * share.value:.1f}%, rounds {100 * share.low:.1f}% to {100 * share.high:.1f}%;"
            " met only when every round is within the target (the cards' rule)."
        )
    if a.plan.round_to:
        text += f" Kept channels rounded up to multiples of {a.plan.round_to}."
    text += (
        f" {what.capitalize()}: dense {100 * a.dense_accuracy:.2f}%, predicted from the curves "
        f"{100 * a.predicted_accuracy:.2f}%, {verified}."
    )
    if a.candidates:
        ranked = ", ".join(
            f"{name} {100 * acc:.2f}%"
            for name, acc in sorted(a.candidates.items(), key=lambda kv: -kv[1])
        )
        text += (
            f" Compared on {a.compared_on}, each meeting the target: {ranked}; kept **{a.chosen}**."
        )
    if a.flagged and a.gap is not None:
        text += (
            f" Predicted and verified differ by {100 * abs(a.gap):.1f} points: pruning several"
            " layers interacts in ways the one-layer curves do not see."
        )
    if a.curves_on is not None:
        sentence = a.curves_on.describe(a.verified_accuracy, what)
        text += f" {sentence[0].upper()}{sentence[1:]}."
        if a.representative is False:
            text += "\n\n:warning: **The subset did not predict all the samples for this plan.**"
    if a.verified_accuracy is not None:
        warning = accuracy_warning(a.verified_accuracy, a.dense_accuracy, n_classes, labelled)
        if warning:
            text += f"\n\n:warning: **{warning}**"
    return text


def _needs_note(needs: alloc.CurveNeeds, samples: int) -> str:
    ratios = ", ".join(f"{round(100 * r)}" for r in needs.ratios)
    rounded = (
        f", kept channels rounded up to multiples of {needs.round_to}" if needs.round_to else ""
    )
    subset = needs.images < samples
    on = f", each on {needs.images} of the {samples} samples" if subset else ""
    what = f"{needs.method} at {ratios}%{rounded}{on}"
    total = needs.left + needs.cached
    if not needs.left:
        return f"Its {total} sensitivity points ({what}) are all measured: it starts from them."
    if subset:
        where = (
            f"a point costs about {needs.images}/{samples} of one on all samples, and the plan is"
            " still measured and verified on all of them"
        )
    elif needs.round_to:
        where = "these rounded curves are the allocation's own"
    else:
        where = "the Sensitivity page's *Allocation's ratios* scans exactly these, with an ETA"
    measured = f"; {needs.cached} are measured already" if needs.cached else ""
    return (
        f"It first scans {needs.left} of its {total} sensitivity points ({what}){measured}. From"
        f" an empty cache this scan is most of the time; {where}."
    )


def section(subject: Subject) -> None:
    """Draw the expander; on "Use this plan" the Prune sliders take the allocation."""
    model, data = subject.model_spec, st.session_state[Keys.DATA]
    with st.expander("Start from an automatic allocation", icon=":material/auto_fix_high:"):
        cols = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
        kinds = {k.name: k for k in alloc.target_kinds()}
        kind = cols[0].selectbox(
            "Target", list(kinds), format_func=lambda k: kinds[k].label, key=Keys.ALLOC_KIND
        )
        spec = kinds[kind]
        methods = [
            m for m in available_methods() if not spec.needs_structured or get_method(m).structured
        ]
        if subject.capabilities.structured_off:
            methods = [m for m in methods if not get_method(m).structured]
        if not methods:
            st.info(
                f"A {spec.label.lower()} target needs a structured method, and those are off for"
                f" this model: {subject.capabilities.structured_off}."
            )
            return
        default = alloc.default_method(kind)
        method = cols[1].selectbox(
            "Allocation method",
            methods,
            index=methods.index(default) if default in methods else 0,
            key=f"{Keys.ALLOC_METHOD}.{kind}",
        )
        value = cols[2].slider("Value (%)", 5, 95, 50, 5, key=Keys.ALLOC_VALUE) / 100
        samples = len(subject.data.test)
        images = (
            cols[3].selectbox(
                "Curves on",
                [0, *(n for n in _SUBSETS if n < samples)],
                format_func=lambda n: f"all {samples} samples" if n == 0 else f"{n} samples",
                key=Keys.ALLOC_IMAGES,
                help=(
                    "The sensitivity curves on a seeded subset of the evaluation samples cost that"
                    " share of a scan on all of them; the target is measured and the plan verified"
                    " on all, and the result says whether the subset predicted them."
                ),
            )
            or None
        )
        st.caption(
            "Per-layer ratios that reach the target with the least accuracy loss the sensitivity"
            " curves predict; the target is then measured on the pruned model and the plan"
            " verified."
        )
        needs = st.empty()  # refilled after a run below: the count it gives changes with it

        def show_needs() -> None:
            try:
                note = _needs_note(cache.curve_needs(model, data, kind, method, images), samples)
                needs.caption(note)
            except ExplorerError as e:
                needs.error(str(e))

        show_needs()
        left, right = st.columns(2)
        try:
            if left.button("Allocate", type="primary", key="prune.allocate"):
                _run(
                    subject,
                    (model, data, kind, value, method, images),
                    lambda p: alloc.allocate(
                        subject,
                        (kind, value),
                        method,
                        on_progress=p,
                        executor=cache.executor(),
                        curve_images=images,
                    ),
                )
                show_needs()
            found = _results().get((model, data, kind, value, method, images))
            if found is not None:
                st.markdown(_summary(found, subject.data.has_labels, subject.dense()[1].shape[1]))
                st.button(
                    "Use this plan",
                    key="prune.allocate.use",
                    on_click=_use,
                    args=(found.plan, subject),
                    icon=":material/tune:",
                )
            if right.button(f"Pareto front ({len(_FRONT)} targets)", key="prune.allocate.front"):
                _run(
                    subject,
                    ("front", model, data, kind, method, images),
                    lambda p: alloc.pareto_front(
                        subject,
                        kind,
                        _FRONT,
                        method,
                        on_progress=p,
                        executor=cache.executor(),
                        curve_images=images,
                    ),
                )
                show_needs()
            front = _results().get(("front", model, data, kind, method, images))
            if front:
                st.plotly_chart(
                    figures.allocation_front([a.to_dict() for a in front]),
                    key="prune.allocate.front_chart",
                )
        except ExplorerError as e:
            st.error(str(e))
