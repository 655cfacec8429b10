"""Streamlit glue of the Recover page: run the loop with a progress bar, keep its numbers per user;
the widgets of a schedule's options.

A finished run is kept in the session (``ui.persist`` saves it on the server): its table, its
fine-tuning curve, its settings, and the recovered fp32 weights (in the cache folder by content
hash), from which the Export page builds the recovered bundle. A run that was interrupted (Cancel,
or any other click meanwhile) records nothing and says so on the next run of the page.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import streamlit as st

from explorer.loop import INT8_MODES, run_loop
from explorer.plan import PruningPlan
from explorer.recover import batchnorm_layers
from explorer.schedules import SCHEDULES, ScheduleSpec
from explorer.sessions import store_weights
from explorer.subject import Subject
from ui import cache, state
from ui.draft import Draft
from ui.state import Keys

__all__ = [
    "DEFAULTS",
    "last_run",
    "latest",
    "run",
    "schedule_controls",
    "seed_widgets",
    "show_schedule",
    "was_interrupted",
]

DEFAULTS: dict[str, Any] = {
    "recalibrate": True,
    "epochs": 5,
    "distill": False,
    "temperature": 2.0,
    "alpha": 0.5,
    "patience": None,
    "int8": None,
}
INT8_HELP = "auto: dynamic (MatMul/Gemm) for models without convolutions, static QDQ otherwise."
_RUNNING = "recover.running"  # set while a run is under way; left set when the run was interrupted


def _plan_key(plan: PruningPlan) -> str:
    """The plan's key whatever its ``model`` field says (a file's name or its path here)."""
    return replace(plan, model=None).key()


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
            return container.toggle(
                label, value=option.default, key=key, help=option.help, disabled=disabled
            )
        if option.kind is str:
            return container.selectbox(
                label,
                option.choices,
                index=option.choices.index(option.default),
                key=key,
                help=option.help,
                disabled=disabled,
            )
        if option.kind is int:
            return int(
                container.number_input(
                    label,
                    min_value=int(option.minimum or 0),
                    value=int(option.default),
                    step=1,
                    key=key,
                    help=option.help,
                    disabled=disabled,
                )
            )
        return float(
            container.number_input(
                label,
                min_value=float(option.minimum or 0.0),
                max_value=None if option.maximum is None else float(option.maximum),
                value=float(option.default),
                format="%g",
                step=(option.maximum or 1.0) / 20 if option.maximum else None,
                key=key,
                help=option.help,
                disabled=disabled,
            )
        )

    shown = [o for o in options if o.name not in _HIDDEN]
    cols = st.columns(max(1, min(3, len(shown))))
    for i, option in enumerate(shown):
        chosen[option.name] = widget(cols[i % len(cols)], option)
    hidden = [o for o in options if o.name in _HIDDEN]
    if hidden:
        with st.expander("More options"):
            for option in hidden:
                chosen[option.name] = widget(st, option)
    return ScheduleSpec(
        name, tuple((k, v) for k, v in chosen.items() if v != info.option(k).default)
    )


def _key(plan: PruningPlan, settings: dict[str, Any]) -> str:
    return f"{state.subject_id()}|{_plan_key(plan)}|{sorted(settings.items())}"


def seed_widgets(blocked: bool) -> None:
    """Start the page's widgets at the settings of this model's last run (the defaults before
    one)."""
    last = st.session_state[Keys.RECOVER_SETTINGS].get(state.subject_id(), {})
    s = {**DEFAULTS, **({"recalibrate": False, "epochs": 0} if blocked else {}), **last}
    for key, value in (
        (Keys.RECOVER_BN, s["recalibrate"]),
        (Keys.RECOVER_EPOCHS, s["epochs"]),
        (Keys.RECOVER_DISTILL, s["distill"]),
        (Keys.RECOVER_TEMPERATURE, float(s["temperature"])),
        (Keys.RECOVER_ALPHA, float(s["alpha"])),
        (Keys.RECOVER_PATIENCE, s["patience"] or 0),
        (Keys.RECOVER_INT8, s["int8"] or "off"),
    ):
        st.session_state.setdefault(key, value)


def was_interrupted() -> bool:
    """Whether the last run of this session stopped before it finished (then forgets it)."""
    return st.session_state.pop(_RUNNING, None) is not None


def last_run(plan: PruningPlan, settings: dict[str, Any]) -> dict[str, Any] | None:
    """This user's result of the loop for this plan and these settings, if it ran."""
    return st.session_state[Keys.RECOVER_RESULTS].get(_key(plan, settings))


def latest(plan: PruningPlan) -> dict[str, Any] | None:
    """The most recent finished run of this plan on this model, whatever its settings."""
    prefix = f"{state.subject_id()}|{_plan_key(plan)}|"
    runs = [r for k, r in st.session_state[Keys.RECOVER_RESULTS].items() if k.startswith(prefix)]
    return max(runs, key=lambda r: r.get("finished", 0.0), default=None)


def run(
    subject: Subject, plan: PruningPlan, draft: Draft, settings: dict[str, Any]
) -> dict[str, Any]:
    """Run the loop (a progress bar while it runs) and record every stage in the session history.

    Pressing any button while it runs (Cancel) interrupts the run; nothing is recorded then, and
    ``was_interrupted`` tells the next run of the page.
    """
    st.session_state[_RUNNING] = _key(plan, settings)
    update, done = cache.progress_bar("Recovering:")
    kwargs = dict(settings)
    schedule = kwargs.pop("schedule", None)
    try:
        result = run_loop(
            subject,
            plan,
            on_progress=update,
            schedule=ScheduleSpec.from_dict(schedule) if schedule else None,
            **kwargs,
        )
    finally:
        cache.trim()
    done()
    weights = None
    if result.recovery is not None and result.model is not None:
        weights = str(store_weights(result.model.state_dict()))
    out = {
        "rows": result.table(),
        "epochs": result.epochs,
        "stopped": result.stopped,
        "int8": result.int8,
        "schedule": result.schedule,
        "settings": dict(settings),
        "plan": plan.to_dict(),
        "recovery": result.recovery,
        "weights": weights,
        "summary": draft.summary(subject.inventory),
        "finished": time.time(),
    }
    summary = draft.summary(subject.inventory)
    for stage in result.stages[1:]:  # the dense model is the history's row 0 already
        name = "" if stage.name == "pruned" else f" + {stage.name}"
        state.add_history(
            f"{plan.key()}|{stage.name}|{sorted(settings.items())}",
            draft,
            summary + name,
            stage.metrics,
        )
    st.session_state[Keys.RECOVER_RESULTS][_key(plan, settings)] = out
    st.session_state[Keys.RECOVER_SETTINGS][state.subject_id()] = dict(settings)
    st.session_state.pop(_RUNNING, None)
    return out


def show_schedule(schedule: dict[str, Any], plan: PruningPlan) -> None:
    """A schedule's measured steps: chart, table, and the plan with its schedule to download."""
    import pandas as pd

    from explorer import figures

    st.subheader(f"Schedule: {schedule['name']}", anchor=False)
    if schedule["stop_reason"]:
        st.warning(
            f"The schedule stopped early ({schedule['stop_reason']}): the model reached "
            f"{100 * schedule['sparsity']:.1f}% of the plan's layers' weights zero, not the "
            f"{100 * schedule['target_sparsity']:.1f}% asked for."
        )
    st.plotly_chart(figures.schedule_steps(schedule["steps"]), key="recover.schedule.chart")
    steps = pd.DataFrame(schedule["steps"]).drop(columns=["loss", "val_loss"])
    for col in ("target", "sparsity", "accuracy", "val_accuracy"):
        steps[col] = 100 * steps[col]
    pct = {
        c: st.column_config.NumberColumn(f"{c.replace('_', ' ')} (%)", format="%.2f")
        for c in ("target", "sparsity", "accuracy", "val_accuracy")
    }
    st.dataframe(
        steps,
        hide_index=True,
        key="recover.schedule.table",
        column_config={
            **pct,
            "accuracy": st.column_config.NumberColumn("test accuracy (%)", format="%.2f"),
            "nonzero": st.column_config.NumberColumn("nonzero weights", format="localized"),
            "train_loss": st.column_config.NumberColumn("train loss", format="%.4f"),
            "seconds": st.column_config.NumberColumn("s", format="%.1f"),
        },
    )
    for note in schedule["notes"]:
        st.caption(note)
    spec = ScheduleSpec(
        schedule["name"],
        tuple(
            (k, v)
            for k, v in schedule["settings"].items()
            if v != SCHEDULES[schedule["name"]].option(k).default
        ),
    )
    st.download_button(
        "Download the plan with this schedule",
        plan.with_schedule(spec).to_json() + "\n",
        file_name="plan.json",
        mime="application/json",
        icon=":material/download:",
        key="recover.schedule.download",
        help="`pruning-explorer export --plan plan.json` replays the schedule.",
    )


def settings_controls(subject: Subject, blocked: str, has_train: bool) -> dict[str, Any]:
    """The Recover page's choices: a schedule with its options, or one-shot's stages (batch-norm
    recalibration, fine-tuning, distillation, early stop), and int8. ``blocked``: why training is
    off ('' when it is not). Returns the run's settings (``run_loop``'s keyword arguments, the
    schedule as its plan object)."""
    schedule = st.selectbox(
        "Schedule",
        list(SCHEDULES),
        key=Keys.RECOVER_SCHEDULE,
        disabled=not has_train,
        format_func=lambda n: f"{n}: {SCHEDULES[n].summary}",
        help=(
            "When to prune: once, in rounds, while training, at initialisation, as a lottery "
            "ticket, or after sparsity-inducing training. Schedules other than one-shot train."
        ),
    )
    if schedule != "one-shot":
        spec = schedule_controls(schedule)
        int8 = st.selectbox(
            "int8 quantization",
            ["off", *INT8_MODES],
            key=Keys.RECOVER_INT8,
            help=INT8_HELP,
        )
        settings = {
            "recalibrate": False,
            "epochs": 0,
            "distill": False,
            "temperature": 2.0,
            "alpha": 0.5,
            "patience": None,
            "int8": None if int8 == "off" else int8,
            "schedule": spec.to_dict(),
        }
    else:
        has_bn = bool(batchnorm_layers(subject.model))
        cols = st.columns(3)
        bn = cols[0].checkbox(
            "Recalibrate BN",
            key=Keys.RECOVER_BN,
            disabled=not has_bn or bool(blocked),
            help=(
                "Re-estimate the batch-norm running statistics on the training split (seconds)."
                if has_bn
                else "This model has no batch norm."
            ),
        )
        epochs = cols[1].slider(
            "Fine-tuning epochs",
            0,
            30,
            key=Keys.RECOVER_EPOCHS,
            disabled=not has_train,
            help=blocked or (None if has_train else "This data has no training split."),
        )
        int8 = cols[2].selectbox(
            "int8 quantization",
            ["off", *INT8_MODES],
            key=Keys.RECOVER_INT8,
            help=INT8_HELP,
        )
        distill = cols[1].toggle(
            "Distil from dense",
            key=Keys.RECOVER_DISTILL,
            disabled=not epochs,
            help=(
                "Fine-tune towards the dense model's outputs (knowledge distillation) as well"
                " as the labels."
            ),
        )
        temperature = cols[1].number_input(
            "Temperature", 1.0, 10.0, step=0.5, key=Keys.RECOVER_TEMPERATURE, disabled=not distill
        )
        alpha = cols[1].number_input(
            "Distillation weight", 0.0, 1.0, step=0.1, key=Keys.RECOVER_ALPHA, disabled=not distill
        )
        patience = cols[0].number_input(
            "Early stop (patience)",
            0,
            30,
            key=Keys.RECOVER_PATIENCE,
            disabled=not epochs or subject.data.val is None,
            help=(
                "Stop after this many epochs without a better validation score; 0: never. "
                "The best epoch is kept."
                if subject.data.val
                else "This data has no validation split: every epoch runs, the last one is kept."
            ),
        )
        settings = {
            "recalibrate": bn and has_bn and not blocked,
            "epochs": epochs if has_train else 0,
            "distill": distill and bool(epochs),
            "temperature": temperature,
            "alpha": alpha,
            "patience": (patience or None) if subject.data.val is not None else None,
            "int8": None if int8 == "off" else int8,
        }
    return settings
