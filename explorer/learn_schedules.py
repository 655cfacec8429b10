"""The Learn page's experiments on *when* to prune (``explorer.schedules``) and the two paper tables
(``explorer.papers``), short enough for a button. ``explorer.learn`` registers them with the rest.

Each compares like with like: the same final sparsity, the same number of training epochs, the
same initialisation where training starts from scratch. A difference counts only when it is at
least ``MIN_SAMPLES`` test samples, the rule of the other experiments (smaller ones are within what
a seed moves, see "Instability").
"""

from __future__ import annotations

import copy

import pandas as pd
import plotly.graph_objects as go

from explorer.evaluate import evaluate_torch
from explorer.learn_base import Experiment, LearnResult, lines, pct
from explorer.models.reinit import fresh_model
from explorer.papers import HAN, LOTTERY, han_iterative, lottery_mnist1d
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Progress
from explorer.prune import apply_plan
from explorer.recover import finetune
from explorer.schedules import ScheduleSpec, run_schedule
from explorer.subject import Subject

__all__ = ["SCHEDULE_EXPERIMENTS"]

MIN_SAMPLES = 2  # a difference of fewer test samples than this is not a win


def _acc(subject: Subject, model: object) -> float:
    return evaluate_torch(model, subject.data.test)[0]  # type: ignore[arg-type]


def _plan(
    subject: Subject,
    ratio: float,
    method: str = "l1-unstructured",
    names: list[str] | None = None,
    schedule: ScheduleSpec | None = None,
    scope: str = "local",
) -> PruningPlan:
    names = names if names is not None else subject.layer_names
    return PruningPlan(
        method=method,
        layers={n: LayerRule(ratio) for n in names},
        model=subject.model_spec,
        schedule=schedule,
        scope=scope,
        ratio=ratio if scope == "global" else None,
    )


def _bars(df: pd.DataFrame, x: str, y: str, title: str, ytitle: str = "test accuracy") -> go.Figure:
    fig = go.Figure(go.Bar(x=df[x], y=df[y], text=[pct(v) for v in df[y]], textposition="outside"))
    low = max(0.0, float(df[y].min()) - 0.1)
    fig.update_layout(
        title=title,
        yaxis_title=ytitle,
        yaxis_range=[low, min(1.0, float(df[y].max()) + 0.05)],
        height=380,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return fig


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _won(a: float, b: float, n: int) -> bool:
    """``a`` beats ``b`` by at least ``MIN_SAMPLES`` of ``n`` test samples."""
    return (a - b) * n >= MIN_SAMPLES - 1e-9


# --- gradual or iterative vs one-shot -------------------------------------------------------------

GRADUAL_SPARSITY = 0.95
GRADUAL_EPOCHS = 4


def gradual_vs_one_shot(subject: Subject, progress: Progress) -> LearnResult:
    s, e = GRADUAL_SPARSITY, GRADUAL_EPOCHS
    specs = {
        f"one-shot, then {e} epochs": ScheduleSpec.make("one-shot", epochs=e, lr=1e-3),
        f"iterative, {e} rounds x 1 epoch": ScheduleSpec.make("iterative", rounds=e, epochs=1),
        f"gradual, {e} epochs": ScheduleSpec.make("gradual", epochs=e),
    }
    rows, runs = [], {}
    for i, (label, spec) in enumerate(specs.items()):
        progress(i / len(specs), label)
        result = run_schedule(subject, _plan(subject, s), spec)
        runs[label] = result
        rows.append(
            (
                label,
                result.final.accuracy,
                result.final.sparsity,
                sum(1 for st in result.steps if st.phase == "train"),
            )
        )
    df = pd.DataFrame(rows, columns=["schedule", "accuracy", "sparsity", "epochs"])
    n = len(subject.data.test)
    one = float(df.accuracy.iloc[0])
    best_i = 1 + int(df.accuracy.iloc[1:].to_numpy().argmax())
    best = df.iloc[best_i]
    holds = _won(float(best.accuracy), one, n)
    pruned_at_once = runs[df.schedule.iloc[0]].steps[1].accuracy
    text = (
        f"Every layer of {subject.model_spec} pruned to {s:.0%} (L1), {e} training epochs in each"
        f" schedule. One-shot: {pct(pruned_at_once)} right after pruning, {pct(one)} after"
        f" fine-tuning. Iterative: {pct(df.accuracy.iloc[1])}; gradual:"
        f" {pct(df.accuracy.iloc[2])}. "
        + (
            f"{best.schedule.split(',')[0].capitalize()} beat one-shot by"
            f" {(best.accuracy - one) * n:.0f} test samples of {n}: pruning in steps lets training"
            " adapt before the next cut."
            if holds
            else (
                f"Neither beat one-shot by {MIN_SAMPLES} test samples or more (of {n}): on this"
                " model, with this budget, the schedule did not matter measurably."
            )
        )
    )
    fig = _bars(df, "schedule", "accuracy", f"{s:.0%} sparsity, {e} epochs of training each")
    return LearnResult(
        "gradual",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(subject, s, schedule=specs[df.schedule.iloc[best_i]]),
        extra={"steps": {k: r.rows() for k, r in runs.items()}},
    )


# --- at initialisation vs after training ---------------------------------------------------------

INIT_SPARSITIES = (0.8, 0.95)
INIT_EPOCHS = 4


def init_vs_after(subject: Subject, progress: Progress) -> LearnResult:
    """SNIP at initialisation vs magnitude after training, from the same initialisation and the same
    epochs, both ranking weights globally: SNIP trains E epochs sparse; the other trains E-1 epochs
    dense, prunes, fine-tunes 1."""
    e = INIT_EPOCHS
    init = fresh_model(subject.model, subject.model_spec, seed=0)
    progress(0.0, f"training the dense network {e - 1} epoch(s) from the initialisation")
    start = copy.deepcopy(init)
    dense = finetune(start, subject.data, e - 1, lr=2e-3, recalibrate=False).model
    rows = []
    for i, s in enumerate(INIT_SPARSITIES):
        progress((i + 0.3) / len(INIT_SPARSITIES), f"{s:.0%}: SNIP at initialisation, {e} epochs")
        snip = run_schedule(
            subject, _plan(subject, s, scope="global"), ScheduleSpec.make("snip", epochs=e)
        ).final.accuracy
        progress(
            (i + 0.7) / len(INIT_SPARSITIES),
            f"{s:.0%}: after {e - 1} epochs of training, 1 of fine-tuning",
        )
        pruned = apply_plan(dense, _plan(subject, s, scope="global"), subject.example_input)
        after = _acc(subject, finetune(pruned, subject.data, 1, lr=1e-3, recalibrate=False).model)
        rows += [("at initialisation (SNIP)", s, snip), ("after training (magnitude)", s, after)]
    df = pd.DataFrame(rows, columns=["when", "sparsity", "accuracy"])
    piv = df.pivot(index="sparsity", columns="when", values="accuracy")
    n = len(subject.data.test)
    hi = piv.loc[max(INIT_SPARSITIES)]
    after_hi, snip_hi = (
        float(hi["after training (magnitude)"]),
        float(hi["at initialisation (SNIP)"]),
    )
    holds = _won(after_hi, snip_hi, n)
    lo = piv.loc[min(INIT_SPARSITIES)]
    text = (
        f"Same initialisation, {e} epochs each, weights ranked across all layers. At"
        f" {min(INIT_SPARSITIES):.0%}: SNIP {pct(lo['at initialisation (SNIP)'])}, after training"
        f" {pct(lo['after training (magnitude)'])}. At {max(INIT_SPARSITIES):.0%}: SNIP"
        f" {pct(hi['at initialisation (SNIP)'])}, after training"
        f" {pct(hi['after training (magnitude)'])}. "
        + (
            "Pruning after training won at the highest sparsity: the trained weights say better"
            " which connections matter than one batch of gradients at initialisation does."
            if holds
            else (
                f"SNIP won at the highest sparsity by {(snip_hi - after_hi) * n:.0f} test samples"
                f" of {n}: with this short budget, {e} epochs on a sparse network from the start"
                f" beat {e - 1} dense epochs and one after the cut. The claim does not hold here."
                if _won(snip_hi, after_hi, n)
                else (
                    f"Neither won by {MIN_SAMPLES} test samples at the highest sparsity: here"
                    " choosing the connections at initialisation cost nothing measurable."
                )
            )
        )
    )
    fig = lines(
        df,
        "sparsity",
        "accuracy",
        "when",
        f"At initialisation vs after training ({e} epochs)",
        "sparsity",
        "test accuracy",
    )
    return LearnResult(
        "snip",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(
            subject,
            max(INIT_SPARSITIES),
            schedule=ScheduleSpec.make("snip", epochs=e),
            scope="global",
        ),
    )


# --- lottery ticket: rewinding vs random re-initialisation ---------------------------------------

LOTTERY_SPARSITY = 0.9


def lottery_vs_reinit(subject: Subject, progress: Progress) -> LearnResult:
    s = LOTTERY_SPARSITY
    rows, results = [], {}
    for i, (label, reinit) in enumerate(
        (("rewound to their initial values", False), ("re-initialised at random", True))
    ):
        progress(i / 2, f"lottery ticket, survivors {label}")
        spec = ScheduleSpec.make("lottery", rounds=2, epochs=2, reinit=reinit)
        result = run_schedule(subject, _plan(subject, s), spec)
        results[label] = result
        rows.append((label, result.final.accuracy))
    df = pd.DataFrame(rows, columns=["survivors", "accuracy"])
    n = len(subject.data.test)
    rewind, reinit = float(df.accuracy.iloc[0]), float(df.accuracy.iloc[1])
    holds = _won(rewind, reinit, n)
    dense = next(
        st
        for st in results[df.survivors.iloc[0]].steps
        if st.phase == "train" and st.round == 0 and st.epoch == 2
    ).accuracy
    text = (
        f"Train from a fresh initialisation (2 epochs: {pct(dense)}), then twice: prune to {s:.0%}"
        " on a geometric ramp, reset the surviving weights, retrain 2 epochs. The same masks'"
        f" procedure, two resets: rewound to their initial values {pct(rewind)}, re-initialised at"
        f" random {pct(reinit)}. "
        + (
            f"Rewinding won by {(rewind - reinit) * n:.0f} test samples of {n}: the initial values"
            " of the survivors matter, as the lottery-ticket hypothesis says."
            if holds
            else (
                f"Rewinding did not win by {MIN_SAMPLES} test samples (of {n}): on this model and"
                " budget the initial values did not matter measurably."
            )
        )
    )
    fig = _bars(
        df,
        "survivors",
        "accuracy",
        f"Lottery ticket at {s:.0%}: rewind vs random re-initialisation",
    )
    return LearnResult(
        "lottery",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(subject, s, schedule=ScheduleSpec.make("lottery", rounds=2, epochs=2)),
    )


# --- regularise, then prune vs prune, then fine-tune ---------------------------------------------

REG_RATIO = 0.7
REG_STRENGTH = 3e-3


def regularize_vs_finetune(subject: Subject, progress: Progress) -> LearnResult:
    """Channels (neurons) removed: group lasso while training, then prune and fine-tune, against
    pruning the trained model and fine-tuning as many epochs."""
    names = [layer.name for layer in subject.inventory.layers if layer.group]
    e, f = 2, 1
    plan = _plan(subject, REG_RATIO, "l2-structured", names)
    progress(0.0, f"one-shot: remove {REG_RATIO:.0%} of the channels, fine-tune {e + f} epochs")
    one = run_schedule(subject, plan, ScheduleSpec.make("one-shot", epochs=e + f, lr=1e-3))
    progress(0.5, f"regularized: group lasso {e} epochs, remove the channels, fine-tune {f}")
    reg = run_schedule(
        subject,
        plan,
        ScheduleSpec.make(
            "regularized", epochs=e, finetune_epochs=f, penalty="group-lasso", strength=REG_STRENGTH
        ),
    )

    def at_prune(result: object) -> float:
        return next(st.accuracy for st in result.steps if st.phase == "prune")  # type: ignore[attr-defined]

    df = pd.DataFrame(
        [
            ("prune, then fine-tune", at_prune(one), one.final.accuracy),
            ("regularise, prune, fine-tune", at_prune(reg), reg.final.accuracy),
        ],
        columns=["schedule", "right after pruning", "accuracy"],
    )
    n = len(subject.data.test)
    holds = _won(reg.final.accuracy, one.final.accuracy, n)
    text = (
        f"{REG_RATIO:.0%} of the output channels of {', '.join(names)} removed (L2), {e + f} epochs"
        f" of training in both. Right after pruning: {pct(at_prune(one))} without regularisation,"
        f" {pct(at_prune(reg))} after {e} epochs of group lasso (λ={REG_STRENGTH:g}), which pushes"
        f" whole channels towards zero. At the end: {pct(one.final.accuracy)} against"
        f" {pct(reg.final.accuracy)}. "
        + (
            f"Regularising first won by {(reg.final.accuracy - one.final.accuracy) * n:.0f} test"
            f" samples of {n}."
            if holds
            else f"Regularising first did not win by {MIN_SAMPLES} test samples (of {n}) at the end"
            + (", though it made the cut itself gentler." if at_prune(reg) > at_prune(one) else ".")
        )
    )
    long = df.melt(id_vars="schedule", var_name="when", value_name="test accuracy")
    fig = go.Figure()
    for when, part in long.groupby("when", sort=False):
        fig.add_trace(
            go.Bar(
                x=part.schedule,
                y=part["test accuracy"],
                name=str(when),
                text=[pct(v) for v in part["test accuracy"]],
                textposition="outside",
            )
        )
    fig.update_layout(
        barmode="group",
        title="Structured pruning: regularise first, or fine-tune after",
        yaxis_title="test accuracy",
        height=380,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return LearnResult(
        "regularized",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        plan.with_schedule(
            ScheduleSpec.make(
                "regularized",
                epochs=e,
                finetune_epochs=f,
                penalty="group-lasso",
                strength=REG_STRENGTH,
            )
        ),
    )


# --- the two paper tables, short -----------------------------------------------------------------


def han_table(subject: Subject, progress: Progress) -> LearnResult:
    result = han_iterative(subject, rounds=3, epochs=1, lr=1e-3, on_progress=progress)
    paper = HAN[subject.model_spec.removeprefix("zoo:")]
    f = result.final
    df = pd.DataFrame(
        [(n, paper["kept"].get(n), f["kept"][n]) for n in subject.layer_names],
        columns=["layer", "paper", "ours"],
    )
    verdicts = result.verdicts()
    holds = all(ok for _, ok, _ in verdicts)
    text = (
        "Han et al.'s rule (a layer's weights below q x its standard deviation go; q from each"
        " layer's sensitivity) in 3 rounds of pruning and 1 epoch of retraining each: "
        + " ".join(
            f"{_sentence(claim)}: {'holds' if ok else 'does not hold'} ({why})."
            for claim, ok, why in verdicts
        )
        + f" The paper: {100 * paper['dense_error']:.2f}% error dense,"
        f" {100 * paper['pruned_error']:.2f}% pruned (trained on 60,000 digits; the zoo has"
        " 3,500). benchmarks/papers.py runs the longer version."
    )
    long = df.melt(id_vars="layer", var_name="source", value_name="weights kept")
    fig = go.Figure()
    for source, part in long.groupby("source", sort=False):
        fig.add_trace(
            go.Bar(
                x=part.layer,
                y=part["weights kept"],
                name=str(source),
                text=[pct(v) for v in part["weights kept"]],
                textposition="outside",
            )
        )
    fig.update_layout(
        barmode="group",
        title=f"Weights kept per layer (Table {paper['table']})",
        yaxis_tickformat=".0%",
        height=380,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    ratios = {n: 1 - f["kept"][n] for n in subject.layer_names}
    plan = PruningPlan(
        method="l1-unstructured",
        layers={n: LayerRule(round(r, 4)) for n, r in ratios.items()},
        model=subject.model_spec,
    )
    return LearnResult(
        "han",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        plan,
        extra={"rounds": result.rounds, "quality": result.quality},
    )


def lottery_notebook(subject: Subject, progress: Progress) -> LearnResult:
    result = lottery_mnist1d(
        trials=1, sparsities=(0.0, 0.9, 0.95), random_at=(0.95,), on_progress=progress
    )
    df = pd.DataFrame(result.rows)[["criterion", "sparsity", "best", "last"]]
    verdicts = result.verdicts()
    holds = all(ok for _, ok, _ in verdicts)
    paper = (
        f"The notebook (2 trials): dense {LOTTERY['magnitude'][0.0][0]}%, magnitude at 90%"
        f" {LOTTERY['magnitude'][0.9][0]}%, at 95% magnitude {LOTTERY['magnitude'][0.95][0]}% vs"
        f" random {LOTTERY['random'][0.95][0]}%."
    )
    text = (
        "MNIST-1D's lottery-ticket notebook, one trial: its MLP trained 1501 steps at lr 0.02,"
        " pruned to 90%, then 95% (every layer alike), the survivors rewound to their initial"
        " values and retrained each time; a random mask of 95% on the same initialisation. "
        + " ".join(
            f"{_sentence(claim)}: {'holds' if ok else 'does not hold'} ({why})."
            for claim, ok, why in verdicts
        )
        + f" {paper} benchmarks/papers.py runs two trials, more rounds and random pruning at 90%"
        " too."
    )
    fig = lines(
        df.assign(accuracy=df.best),
        "sparsity",
        "accuracy",
        "criterion",
        "Best test accuracy while training, by sparsity",
        "sparsity",
        "test accuracy",
    )
    plan = PruningPlan(
        method="l1-unstructured",
        layers={n: LayerRule(0.9) for n in subject.layer_names},
        model=subject.model_spec,
        schedule=ScheduleSpec.make("lottery", rounds=3, epochs=5),
    )
    return LearnResult(
        "lottery-notebook",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        plan,
        extra={"rows": result.rows},
    )


SCHEDULE_EXPERIMENTS = [
    Experiment(
        "gradual",
        "Gradual beats one-shot",
        "At the same final sparsity and training budget, pruning "
        "gradually or in rounds beats pruning at once.",
        "zoo:mnist-lenet300",
        gradual_vs_one_shot,
    ),
    Experiment(
        "snip",
        "After training beats at initialisation",
        "Pruning after training beats pruning at "
        "initialisation (SNIP) at high sparsity, from the same start and budget.",
        "zoo:mnist-lenet300",
        init_vs_after,
    ),
    Experiment(
        "lottery",
        "Lottery tickets: rewinding matters",
        "Rewinding the surviving weights to their initial "
        "values beats re-initialising them at random.",
        "zoo:mnist-lenet300",
        lottery_vs_reinit,
    ),
    Experiment(
        "regularized",
        "Regularise, then prune",
        "Training with group lasso before removing channels beats "
        "removing them and fine-tuning as long.",
        "zoo:mnist-lenet300",
        regularize_vs_finetune,
    ),
    Experiment(
        "han",
        "Han et al. 2015, Table 2",
        "Iterative pruning with retraining removes about 12x of "
        "LeNet-300-100's weights with no more error, keeping far more of the last layer.",
        "zoo:mnist-lenet300",
        han_table,
    ),
    Experiment(
        "lottery-notebook",
        "MNIST-1D lottery tickets",
        "At 90% sparsity iterative magnitude pruning beats "
        "dense; at 95% random pruning falls far below magnitude.",
        "zoo:mnist1d-mlp",
        lottery_notebook,
    ),
]
