"""Streamlit glue of the Recover page: run the loop with a progress bar, keep its numbers per user;
the widgets of a schedule's options."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.loop import run_loop
from explorer.plan import PruningPlan
from explorer.schedules import SCHEDULES, ScheduleSpec
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.state import Keys

__all__ = ["last_run", "run", "schedule_controls", "show_schedule"]

_HIDDEN = ("lr", "seed")  # options shown under "More options"


def schedule_controls(name: str, disabled: bool = False) -> ScheduleSpec:
    """One widget per option of schedule ``name`` (defaults from ``SCHEDULES``); the spec they set,
    with only the options that differ from their defaults (what the plan JSON then records)."""
    info = SCHEDULES[name]
    options = list(info.options)
    chosen: dict[str, Any] = {}

    def widget(container: Any, option: Any) -> Any:
        key = Keys.schedule_option(name, option.name)
        label = option.name.replace("_", " ").capitalize()
        if option.kind is bool:
            return container.toggle(label, value=option.default, key=key, help=option.help, disabled=disabled)
        if option.kind is str:
            return container.selectbox(label, option.choices, index=option.choices.index(option.default), key=key,
                                       help=option.help, disabled=disabled)
        if option.kind is int:
            return int(container.number_input(label, min_value=int(option.minimum or 0), value=int(option.default),
                                              step=1, key=key, help=option.help, disabled=disabled))
        return float(container.number_input(label, min_value=float(option.minimum or 0.0),
                                            max_value=None if option.maximum is None else float(option.maximum),
                                            value=float(option.default), format="%g",
                                            step=(option.maximum or 1.0) / 20 if option.maximum else None,
                                            key=key, help=option.help, disabled=disabled))

    shown = [o for o in options if o.name not in _HIDDEN]
    cols = st.columns(max(1, min(3, len(shown))))
    for i, option in enumerate(shown):
        chosen[option.name] = widget(cols[i % len(cols)], option)
    hidden = [o for o in options if o.name in _HIDDEN]
    if hidden:
        with st.expander("More options"):
            for option in hidden:
                chosen[option.name] = widget(st, option)
    return ScheduleSpec(name, tuple((k, v) for k, v in chosen.items() if v != info.option(k).default))


def _key(plan: PruningPlan, settings: dict[str, Any]) -> str:
    return f"{state.subject_id()}|{plan.key()}|{sorted(settings.items())}"


def last_run(plan: PruningPlan, settings: dict[str, Any]) -> dict[str, Any] | None:
    """This user's result of the loop for this plan and these settings, if it ran."""
    return st.session_state[Keys.RECOVER_RESULTS].get(_key(plan, settings))


def run(subject: Subject, plan: PruningPlan, draft: Draft, settings: dict[str, Any]) -> dict[str, Any]:
    """Run the loop (a progress bar while it runs) and record every stage in the session history.

    Pressing any button while it runs (Cancel) interrupts the run; nothing is recorded then.
    """
    update, done = cache.progress_bar("Recovering:")
    kwargs = dict(settings)
    schedule = kwargs.pop("schedule", None)
    result = run_loop(subject, plan, on_progress=update, schedule=ScheduleSpec.from_dict(schedule) if schedule else None,
                      **kwargs)
    done()
    out = {"rows": result.table(), "epochs": result.epochs, "stopped": result.stopped, "int8": result.int8,
           "schedule": result.schedule}
    summary = draft.summary(subject.inventory)
    for stage in result.stages[1:]:  # the dense model is the history's row 0 already
        name = "" if stage.name == "pruned" else f" + {stage.name}"
        state.add_history(f"{plan.key()}|{stage.name}|{sorted(settings.items())}", draft, summary + name,
                          stage.metrics)
    st.session_state[Keys.RECOVER_RESULTS][_key(plan, settings)] = out
    return out


def show_schedule(schedule: dict[str, Any], plan: PruningPlan) -> None:
    """A schedule's measured steps: chart, table, and the plan with its schedule to download."""
    import pandas as pd

    from explorer import figures

    st.subheader(f"Schedule: {schedule['name']}", anchor=False)
    if schedule["stop_reason"]:
        st.warning(f"The schedule stopped early ({schedule['stop_reason']}): the model reached "
                   f"{100 * schedule['sparsity']:.1f}% of the plan's layers' weights zero, not the "
                   f"{100 * schedule['target_sparsity']:.1f}% asked for.")
    st.plotly_chart(figures.schedule_steps(schedule["steps"]), key="recover.schedule.chart")
    steps = pd.DataFrame(schedule["steps"]).drop(columns=["loss", "val_loss"])
    for col in ("target", "sparsity", "accuracy", "val_accuracy"):
        steps[col] = 100 * steps[col]
    pct = {c: st.column_config.NumberColumn(f"{c.replace('_', ' ')} (%)", format="%.2f")
           for c in ("target", "sparsity", "accuracy", "val_accuracy")}
    st.dataframe(steps, hide_index=True, key="recover.schedule.table", column_config={
        **pct, "accuracy": st.column_config.NumberColumn("test accuracy (%)", format="%.2f"),
        "nonzero": st.column_config.NumberColumn("nonzero weights", format="localized"),
        "train_loss": st.column_config.NumberColumn("train loss", format="%.4f"),
        "seconds": st.column_config.NumberColumn("s", format="%.1f")})
    for note in schedule["notes"]:
        st.caption(note)
    spec = ScheduleSpec(schedule["name"], tuple(
        (k, v) for k, v in schedule["settings"].items() if v != SCHEDULES[schedule["name"]].option(k).default))
    st.download_button("Download the plan with this schedule", plan.with_schedule(spec).to_json() + "\n",
                       file_name="plan.json", mime="application/json", icon=":material/download:",
                       key="recover.schedule.download",
                       help="`pruning-explorer export --plan plan.json` replays the schedule.")
