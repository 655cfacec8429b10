"""Guided experiments for the Learn page: each tests one claim about pruning on a zoo model.

Every experiment runs for real (in well under a minute on 2 cores) and ends in a table, a plotly
figure and a paragraph whose every number comes from that run. The verdict is computed from the
numbers: when a claim does not hold on this model, the text says so. Each result carries a plan
that reproduces its key configuration in the Prune page.

One concern: the Learn page's claims, one function per experiment (and the few helpers they share).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from explorer.evaluate import evaluate_torch
from explorer.learn_base import Experiment, LearnResult, lines, pct
from explorer.learn_schedules import SCHEDULE_EXPERIMENTS
from explorer.methods.calibration import SAMPLES as CALIBRATION_SAMPLES
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Progress, no_progress
from explorer.prune import apply_plan
from explorer.subject import Subject

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "LearnResult",
    "run_experiment",
    "scope_figure",
    "scope_sparsity",
]


# --- helpers -------------------------------------------------------------------------------------


def _acc(subject: Subject, model: nn.Module) -> float:
    return evaluate_torch(model, subject.data.test)[0]


def _plan(
    subject: Subject,
    method: str,
    ratio: float,
    scope: str = "local",
    names: list[str] | None = None,
) -> PruningPlan:
    names = names if names is not None else subject.layer_names
    if scope == "global":
        return PruningPlan(
            method=method,
            layers={n: LayerRule(ratio) for n in names},
            scope="global",
            ratio=ratio,
            model=subject.model_spec,
        )
    return PruningPlan(
        method=method, layers={n: LayerRule(ratio) for n in names}, model=subject.model_spec
    )


def _finetune(model: nn.Module, subject: Subject, epochs: int, seed: int = 0) -> nn.Module:
    from explorer.recover import finetune

    return finetune(model, subject.data, epochs, lr=1e-3, seed=seed).model


# --- the experiments -----------------------------------------------------------------------------

SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
CHANCE_BAND = 0.05  # an accuracy less than 5 points above chance is "at chance"
KEEP_POINTS = 0.02  # a compression "keeps" the model when it costs at most 2 points of accuracy


def magnitude_vs_random(subject: Subject, progress: Progress) -> LearnResult:
    rows = []
    for i, s in enumerate(SPARSITIES):
        progress(i / len(SPARSITIES), f"sparsity {s:.0%}")
        l1 = _acc(subject, subject.prune(_plan(subject, "l1-unstructured", s)))
        rnd = [
            _acc(
                subject,
                apply_plan(
                    subject.model,
                    _plan(subject, "random-unstructured", s),
                    subject.example_input,
                    seed=seed,
                ),
            )
            for seed in range(3)
        ]
        rows += [("magnitude (L1)", s, l1), ("random (mean of 3 seeds)", s, statistics.mean(rnd))]
    df = pd.DataFrame(rows, columns=["method", "sparsity", "accuracy"])
    piv = df.pivot(index="sparsity", columns="method", values="accuracy")
    wins = int((piv["magnitude (L1)"] >= piv["random (mean of 3 seeds)"]).sum())
    gap = (piv["magnitude (L1)"] - piv["random (mean of 3 seeds)"]).max()
    at = piv.loc[0.9]
    holds = wins == len(piv)
    text = (
        f"Magnitude pruning scored at least as well as random pruning at {wins} of {len(piv)}"
        " sparsities (every layer at the same ratio). At 90% sparsity: magnitude"
        f" {pct(at['magnitude (L1)'])}, random {pct(at['random (mean of 3 seeds)'])}; the largest"
        f" gap was {100 * gap:.1f} points. "
        + (
            "The claim holds here: small weights carry less of the function than random ones."
            if holds
            else "The claim does not hold at every sparsity on this model."
        )
    )
    fig = lines(
        df,
        "sparsity",
        "accuracy",
        "method",
        "Accuracy after pruning, no recovery",
        "sparsity",
        "accuracy",
    )
    return LearnResult(
        "magnitude",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(subject, "l1-unstructured", 0.9),
    )


def _n_classes(subject: Subject) -> int:
    with torch.no_grad():
        return int(subject.model(subject.example_input).shape[1])


def global_vs_uniform(subject: Subject, progress: Progress) -> LearnResult:
    rows = []
    for i, s in enumerate(SPARSITIES):
        progress(i / len(SPARSITIES), f"sparsity {s:.0%}")
        rows.append(
            (
                "same ratio in every layer",
                s,
                _acc(subject, subject.prune(_plan(subject, "l1-unstructured", s))),
            )
        )
        rows.append(
            (
                "global ranking",
                s,
                _acc(subject, subject.prune(_plan(subject, "l1-unstructured", s, "global"))),
            )
        )
    df = pd.DataFrame(rows, columns=["scope", "sparsity", "accuracy"])
    piv = df.pivot(index="sparsity", columns="scope", values="accuracy")
    g, u = piv["global ranking"], piv["same ratio in every layer"]
    # Judged where the two differ: by more than a point (and two test samples), one of them above
    # chance. Where both sit at chance, or within a point of each other, neither wins.
    chance = 1 / _n_classes(subject)
    margin = max(0.01, 2 / len(subject.data.test))
    at_chance = [
        s for s in piv.index if g[s] - chance < CHANCE_BAND and u[s] - chance < CHANCE_BAND
    ]
    tied = [s for s in piv.index if s not in at_chance and abs(g[s] - u[s]) < margin]
    compared = [s for s in piv.index if s not in at_chance and s not in tied]
    wins = [s for s in compared if g[s] > u[s]]
    holds = bool(compared) and len(wins) == len(compared)
    at = piv.loc[0.9]
    # Where did global ranking put the zeros? Per-layer sparsity at 90%.
    pruned = subject.prune(_plan(subject, "l1-unstructured", 0.9, "global"))
    modules = dict(pruned.named_modules())
    per_layer = {
        n: 1 - int(torch.count_nonzero(modules[n].weight)) / modules[n].weight.numel()
        for n in subject.layer_names
    }
    lo, hi = min(per_layer, key=per_layer.__getitem__), max(per_layer, key=per_layer.__getitem__)

    def listed(points: list[float]) -> str:
        return ", ".join(f"{p:.0%}" for p in points)

    text = (
        f"Where the two differ (by more than {100 * margin:.0f}"
        f" point{'s' if margin > 0.01 else ''}, one of them above chance), global ranking beat the"
        f" same ratio in every layer at {len(wins)} of {len(compared)} sparsities"
        + (f" ({listed(compared)})" if compared else "")
        + ". "
        + (
            f"Both at chance ({100 * chance:.0f}%) at {listed(at_chance)}: no winner there. "
            if at_chance
            else ""
        )
        + (f"Within a point of each other at {listed(tied)}. " if tied else "")
        + f"At 90%: global {pct(at['global ranking'])}, uniform"
        f" {pct(at['same ratio in every layer'])}. Global ranking does not prune layers equally:"
        f" at 90% it left {lo} only {pct(per_layer[lo])} sparse and made {hi}"
        f" {pct(per_layer[hi])} sparse. "
        + (
            "The claim holds here."
            if holds
            else (
                "No sparsity separates the two here."
                if not compared
                else "The claim does not hold at every sparsity where the two differ on this model."
            )
        )
    )
    fig = lines(
        df, "sparsity", "accuracy", "scope", "Global vs uniform L1 pruning", "sparsity", "accuracy"
    )
    fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
    return LearnResult(
        "global",
        df,
        fig,
        text,
        holds if compared else None,
        subject.model_spec,
        _plan(subject, "l1-unstructured", 0.9, "global"),
        extra={
            "per_layer_sparsity": per_layer,
            "compared": compared,
            "at_chance": at_chance,
            "tied": tied,
        },
    )


def layer_sensitivity(subject: Subject, progress: Progress) -> LearnResult:
    from explorer.sensitivity import scan

    df = scan(subject, "l1-unstructured", on_progress=progress)
    dense = float(df.loc[df.ratio == 0, "accuracy"].iloc[0])
    tolerance = {}
    for layer, part in df.groupby("layer", sort=False):
        ok = part[part.accuracy >= dense - 0.01].ratio
        tolerance[layer] = float(ok.max())  # the largest ratio within 1 point of dense
    info = {layer.name: layer for layer in subject.inventory.layers}
    fan_in = {n: int(torch.tensor(info[n].shape[1:]).prod()) for n in tolerance}
    order = sorted(tolerance, key=tolerance.__getitem__)
    most, least = order[0], order[-1]
    corr = pd.Series(tolerance).rank().corr(pd.Series(fan_in).rank())
    holds = tolerance[least] - tolerance[most] >= 0.2
    text = (
        "Pruning one layer at a time (L1, no recovery), the layers tolerate very different ratios"
        f" before losing more than 1 point of accuracy: {most} only {tolerance[most]:.0%}, {least}"
        f" up to {tolerance[least]:.0%}. A plausible reason is redundancy: each output of {most}"
        f" sums {fan_in[most]} weights, each output of {least} sums {fan_in[least]}; the fewer"
        " weights an output depends on, the more each one matters. Across all layers the rank"
        f" correlation between tolerance and weights per output is {corr:+.2f}"
        + (
            ", consistent with that reading."
            if corr > 0.3
            else ", so on this model fan-in alone does not explain it."
        )
    )
    df["fan_in"] = df.layer.map(fan_in)
    fig = lines(
        df,
        "ratio",
        "accuracy",
        "layer",
        "One layer pruned at a time",
        "ratio of the layer pruned",
        "accuracy",
    )
    plan = PruningPlan(
        method="l1-unstructured",
        layers={n: LayerRule(tolerance[n]) for n in tolerance},
        model=subject.model_spec,
    )
    return LearnResult(
        "sensitivity",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        plan,
        extra={"tolerance": tolerance},
    )


def finetune_recovers(subject: Subject, progress: Progress) -> LearnResult:
    rows = []
    sparsities = [0.5, 0.8, 0.9, 0.95]
    dense = _acc(subject, subject.model)
    for i, s in enumerate(sparsities):
        progress(i / len(sparsities), f"sparsity {s:.0%}: pruning and fine-tuning")
        pruned = subject.prune(_plan(subject, "l1-unstructured", s, "global"))
        tuned = _finetune(pruned, subject, epochs=5)
        rows.append((s, dense, _acc(subject, pruned), _acc(subject, tuned)))
    df = pd.DataFrame(rows, columns=["sparsity", "dense", "pruned", "fine-tuned"])
    lost = df["dense"] - df["pruned"]
    back = df["fine-tuned"] - df["pruned"]
    share = [b / lo for b, lo in zip(back, lost, strict=False) if lo > 0.005]
    holds = bool(share) and statistics.mean(share) >= 0.5
    long = df.melt(id_vars="sparsity", var_name="model", value_name="accuracy")
    fig = lines(
        long,
        "sparsity",
        "accuracy",
        "model",
        "Global L1 pruning, then 5 epochs of fine-tuning",
        "sparsity",
        "accuracy",
    )
    worst = df.iloc[-1]
    text = (
        f"Dense accuracy {pct(dense)}. After global L1 pruning and 5 epochs of fine-tuning (zeros"
        " kept zero), "
        + (
            f"fine-tuning won back on average {100 * statistics.mean(share):.0f}% of what pruning"
            f" cost (over the {len(share)} sparsities where pruning cost more than half a point). "
            if share
            else (
                "pruning cost less than half a point at every sparsity, so there was little to"
                " recover. "
            )
        )
        + f"At {worst.sparsity:.0%}: pruned {pct(worst.pruned)}, fine-tuned"
        f" {pct(worst['fine-tuned'])}. "
        + (
            "The claim holds here."
            if holds
            else "The claim does not hold here: most of the loss stayed."
        )
    )
    return LearnResult(
        "finetune",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(subject, "l1-unstructured", 0.9, "global"),
    )


def zeros_vs_removal(subject: Subject, progress: Progress) -> LearnResult:
    convs = [layer.name for layer in subject.inventory.layers if layer.group]
    plans = {
        "unstructured 50% (zeros)": _plan(subject, "l1-unstructured", 0.5, names=convs),
        "structured 50% (channels removed)": _plan(subject, "l1-structured", 0.5, names=convs),
    }
    results = {}
    for i, (label, plan) in enumerate(plans.items()):
        progress(
            i / len(plans), f"measuring {label} in ONNX Runtime, alternately with the dense model"
        )
        results[label] = subject.evaluate(plan)
    first = next(iter(results.values()))
    rows = [
        (
            "dense",
            first.dense.latency_ms_median,
            1.0,
            1.0,
            1.0,
            first.dense.onnx_bytes,
            first.dense.onnx_gzip_bytes,
            first.dense.macs,
            first.dense.accuracy,
        )
    ]
    for label, r in results.items():
        assert r.speedup is not None
        rows.append(
            (
                label,
                r.pruned.latency_ms_median,
                r.speedup.ratio,
                r.speedup.median.low,
                r.speedup.median.high,
                r.pruned.onnx_bytes,
                r.pruned.onnx_gzip_bytes,
                r.pruned.macs,
                r.pruned.accuracy,
            )
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "model",
            "latency_ms_median",
            "speedup",
            "speedup_low",
            "speedup_high",
            "onnx_bytes",
            "onnx_gzip_bytes",
            "macs",
            "accuracy",
        ],
    )
    d, u, s = df.iloc[0], df.iloc[1], df.iloc[2]
    zeros = results["unstructured 50% (zeros)"].speedup
    channels = results["structured 50% (channels removed)"].speedup
    assert zeros is not None and channels is not None
    holds = bool(
        u.onnx_gzip_bytes < 0.8 * d.onnx_gzip_bytes
        and zeros.within_noise
        and channels.faster
        and channels.ratio > 1.5
    )
    same_size = abs(int(u.onnx_bytes) - int(d.onnx_bytes)) <= 0.01 * d.onnx_bytes
    size_text = (
        f"left the ONNX file the same size ({u.onnx_bytes / 1024:.0f} KB)"
        if same_size
        else (
            f"changed the ONNX file from {d.onnx_bytes / 1024:.0f} KB to"
            f" {u.onnx_bytes / 1024:.0f} KB"
        )
    )
    text = (
        "Measured in ONNX Runtime (1 thread, batch 1; each model timed alternately with the dense"
        f" one in {zeros.rounds} rounds). Zeroing half the weights {size_text} and the speed at"
        f" {zeros.describe()} against"
        f" dense{'' if zeros.within_noise else ': outside the noise in this run'}; only the gzip"
        f" size fell, {d.onnx_gzip_bytes / 1024:.0f} KB to {u.onnx_gzip_bytes / 1024:.0f} KB."
        f" Removing half the channels instead made it {channels.describe()} faster"
        f" ({s.latency_ms_median:.3f} ms) and {d.onnx_bytes / s.onnx_bytes:.1f}x smaller, for a MAC"
        f" ratio of {d.macs / s.macs:.2f}x. "
        + ("The claim holds here." if holds else "The claim does not fully hold in this run.")
    )
    fig = go.Figure()
    # Two y axes: offset groups keep the bars side by side (barmode="group" alone overlays them).
    fig.add_trace(
        go.Bar(
            x=df.model,
            y=df.speedup,
            name="speedup vs dense (x)",
            yaxis="y",
            offsetgroup=0,
            error_y=dict(
                type="data",
                symmetric=False,
                array=df.speedup_high - df.speedup,
                arrayminus=df.speedup - df.speedup_low,
            ),
        )
    )
    fig.add_trace(
        go.Bar(
            x=df.model,
            y=df.onnx_gzip_bytes / 1024,
            name="gzip size (KB)",
            yaxis="y2",
            offsetgroup=1,
        )
    )
    fig.update_layout(
        title="Zeros vs removed channels, measured in ONNX Runtime",
        barmode="group",
        height=380,
        yaxis=dict(title="speedup vs dense (median of rounds; bars: their range)"),
        yaxis2=dict(title="gzip size (KB)", overlaying="y", side="right", tickformat=",.0f"),
        margin=dict(l=40, r=40, t=50, b=40),
    )
    return LearnResult(
        "zeros",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        plans["structured 50% (channels removed)"],
    )


def prune_plus_int8(subject: Subject, progress: Progress) -> LearnResult:
    from explorer.quantize import compare_int8
    from explorer.runtime import export_onnx, gzip_size

    convs = [layer.name for layer in subject.inventory.layers if layer.group]
    plan = _plan(subject, "l1-structured", 0.5, names=convs)
    progress(0.05, "pruning 50% of the channels and fine-tuning 3 epochs")
    tuned = _finetune(subject.prune(plan), subject, epochs=3)
    with tempfile.TemporaryDirectory(prefix="explorer-learn-") as tmp:
        dense_path, pruned_path, int8_path = (
            Path(tmp) / n for n in ("dense.onnx", "pruned.onnx", "pruned.int8.onnx")
        )
        export_onnx(subject.model, subject.example_input, dense_path)
        export_onnx(tuned, subject.example_input, pruned_path)
        progress(0.5, "quantizing to int8 and measuring")
        cmp = compare_int8(pruned_path, subject.data, int8_path)
        dense_gz = gzip_size(dense_path)
        dense_acc = _acc(subject, subject.model)
        rows = [
            ("dense fp32", dense_path.stat().st_size, dense_gz, dense_acc),
            ("pruned fp32", cmp.fp32.onnx_bytes, cmp.fp32.onnx_gzip_bytes, cmp.fp32.accuracy),
            (
                f"pruned int8 ({cmp.mode})",
                cmp.int8.onnx_bytes,
                cmp.int8.onnx_gzip_bytes,
                cmp.int8.accuracy,
            ),
        ]
    df = pd.DataFrame(rows, columns=["model", "onnx_bytes", "onnx_gzip_bytes", "accuracy"])
    cut = 1 - df.onnx_gzip_bytes.iloc[2] / dense_gz
    int8_acc = float(df.accuracy.iloc[2])
    kept = (
        int8_acc >= dense_acc - KEEP_POINTS
    )  # a smaller file is only a compression if it still works
    holds = cut >= 0.8 and kept
    if holds:
        verdict = (
            f"The claim (80% or more, within {100 * KEEP_POINTS:.0f} points of dense accuracy)"
            " holds here."
        )
    elif cut >= 0.8:
        verdict = (
            f"The size claim holds, but int8 costs {100 * (dense_acc - int8_acc):.1f} points of"
            f" accuracy against dense (more than {100 * KEEP_POINTS:.0f}): as a compression that"
            " keeps the model, the claim does not hold here."
        )
    else:
        verdict = "The claim (80% or more) does not hold here."
    text = (
        "Removing half the channels (then 3 epochs of fine-tuning) and quantizing to int8 took the"
        f" compressed model from {dense_gz / 1024:.0f} KB to"
        f" {df.onnx_gzip_bytes.iloc[2] / 1024:.0f} KB: {100 * cut:.1f}% smaller. Pruning alone gave"
        f" {df.onnx_gzip_bytes.iloc[1] / 1024:.0f} KB. Accuracy: dense {pct(dense_acc)}, pruned"
        f" {pct(df.accuracy.iloc[1])}, pruned int8 ({cmp.mode}) {pct(int8_acc)}. " + verdict
    )
    fig = go.Figure(
        go.Bar(
            x=df.model,
            y=df.onnx_gzip_bytes / 1024,
            text=[f"{v / 1024:.0f} KB" for v in df.onnx_gzip_bytes],
        )
    )
    fig.update_layout(
        title="Compressed (gzip) ONNX size",
        yaxis_title="KB",
        height=380,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return LearnResult(
        "int8", df, fig, text, holds, subject.model_spec, plan, extra={"int8": cmp.to_dict()}
    )


def cliff(subject: Subject, progress: Progress) -> LearnResult:
    ratios = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99]
    rows = []
    for i, r in enumerate(ratios):
        progress(i / len(ratios), f"sparsity {r:.0%}")
        rows.append(
            (r, _acc(subject, subject.prune(_plan(subject, "l1-unstructured", r, "global"))))
        )
    df = pd.DataFrame(rows, columns=["sparsity", "accuracy"])
    dense = _acc(subject, subject.model)
    ok = df[df.accuracy >= dense - 0.02]
    last_ok = float(ok.sparsity.max()) if len(ok) else None
    broken = df[df.accuracy < 0.5]
    first_broken = float(broken.sparsity.min()) if len(broken) else None
    holds = first_broken is not None
    text = (
        f"Dense accuracy {pct(dense)}. With global L1 pruning, accuracy stays within 2 points of"
        f" dense up to {last_ok:.0%} sparsity"
        if last_ok is not None
        else "Accuracy falls by more than 2 points already at 50%"
    )
    text += (
        f"; it falls below 50% at {first_broken:.0%}. The cliff lies between those two points: past"
        " it each extra percent of zeros removes weights the model cannot do without."
        if first_broken is not None
        else "; it never falls below 50% up to 99%: no cliff on this model in this range."
    )
    fig = go.Figure(
        go.Scatter(x=df.sparsity, y=df.accuracy, mode="lines+markers", name="global L1")
    )
    fig.add_hline(y=dense - 0.02, line_dash="dot", annotation_text="dense - 2 points")
    fig.update_layout(
        title="Over-pruning: where accuracy collapses",
        xaxis_title="sparsity",
        yaxis_title="accuracy",
        height=380,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    plan_ratio = last_ok if last_ok is not None else 0.5
    return LearnResult(
        "cliff",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(subject, "l1-unstructured", plan_ratio, "global"),
    )


def regularisation(subject: Subject, progress: Progress) -> LearnResult:
    from explorer.recover import finetune

    assert subject.data.train is not None
    rows = []
    levels = [0.0, 0.2, 0.4, 0.6]
    for i, s in enumerate(levels):
        progress(i / len(levels), f"sparsity {s:.0%}: fine-tuning 8 epochs")
        start = (
            subject.model
            if s == 0
            else subject.prune(_plan(subject, "l1-unstructured", s, "global"))
        )
        accs = []
        for seed in range(2):
            tuned = finetune(start, subject.data, 8, lr=1e-3, seed=seed).model
            accs.append((_acc(subject, tuned), evaluate_torch(tuned, subject.data.train)[0]))
        test = statistics.mean(a for a, _ in accs)
        train = statistics.mean(b for _, b in accs)
        rows.append((s, test, train, train - test))
    df = pd.DataFrame(rows, columns=["sparsity", "test accuracy", "train accuracy", "gap"])
    base = df.iloc[0]
    best = df.iloc[int(df["test accuracy"].idxmax())]
    n_test = len(subject.data.test)
    better = best.sparsity > 0 and (best["test accuracy"] - base["test accuracy"]) * n_test >= 2
    text = (
        "Each model was fine-tuned 8 epochs (mean of 2 seeds), the dense one included, so only the"
        f" pruning differs. Dense: test {pct(base['test accuracy'])}, train"
        f" {pct(base['train accuracy'])}. "
        + (
            f"The best test accuracy came at {best.sparsity:.0%} sparsity"
            f" ({pct(best['test accuracy'])}),"
            f" {(best['test accuracy'] - base['test accuracy']) * n_test:.1f} more test samples"
            f" right out of {n_test}: a small regularising effect here."
            if better
            else (
                "No pruned model beat the dense one on the test set by 2 samples or more (out of"
                f" {n_test}): on this model light pruning does not measurably improve"
                " generalisation."
            )
        )
        + f" Train-test gap: dense {100 * base.gap:.1f} points, at {df.sparsity.iloc[-1]:.0%}"
        f" {100 * df.gap.iloc[-1]:.1f}."
    )
    long = df.melt(
        id_vars="sparsity",
        value_vars=["test accuracy", "train accuracy"],
        var_name="split",
        value_name="accuracy",
    )
    fig = lines(
        long,
        "sparsity",
        "accuracy",
        "split",
        "Light pruning + the same fine-tuning",
        "sparsity",
        "accuracy",
    )
    return LearnResult(
        "regularisation",
        df,
        fig,
        text,
        bool(better),
        subject.model_spec,
        _plan(subject, "l1-unstructured", float(best.sparsity) or 0.2, "global"),
    )


def instability(subject: Subject, progress: Progress) -> LearnResult:
    rows = []
    seeds = range(5)
    for seed in seeds:
        progress(seed / len(seeds), f"seed {seed}")
        rnd = apply_plan(
            subject.model,
            _plan(subject, "random-unstructured", 0.7),
            subject.example_input,
            seed=seed,
        )
        rows.append(("random masks, 70%", seed, _acc(subject, rnd)))
        pruned = subject.prune(_plan(subject, "l1-unstructured", 0.9, "global"))
        rows.append(
            (
                "L1 90% + 2 epochs fine-tuning",
                seed,
                _acc(subject, _finetune(pruned, subject, 2, seed=seed)),
            )
        )
    df = pd.DataFrame(rows, columns=["setting", "seed", "accuracy"])
    stats = df.groupby("setting", sort=False).accuracy.agg(["mean", "std", "min", "max"])
    n_test = len(subject.data.test)
    parts = [
        f"{name}: mean {pct(r['mean'])}, std {100 * r['std']:.2f} points, range {pct(r['min'])} to"
        f" {pct(r['max'])} ({(r['max'] - r['min']) * n_test:.0f} test samples)"
        for name, r in stats.iterrows()
    ]
    spread = stats["max"] - stats["min"]
    text = (
        "Over 5 seeds: "
        + "; ".join(parts)
        + ". "
        + "Seed alone moved single runs by up to "
        + ", ".join(f"{100 * v:.1f} points ({name})" for name, v in spread.items())
        + ": two single runs that differ by less than that may differ by luck, not by method."
    )
    fig = go.Figure()
    for name, part in df.groupby("setting", sort=False):
        fig.add_trace(go.Box(y=part.accuracy, name=str(name), boxpoints="all"))
    fig.update_layout(
        title="Spread over 5 seeds",
        yaxis_title="accuracy",
        height=380,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return LearnResult(
        "seeds",
        df,
        fig,
        text,
        bool((spread > 0).any()),
        subject.model_spec,
        _plan(subject, "random-unstructured", 0.7),
    )


def data_aware_criteria(subject: Subject, progress: Progress) -> LearnResult:
    sparsities = [0.5, 0.6, 0.7, 0.8, 0.9]
    criteria = {
        "magnitude (l1-unstructured)": "l1-unstructured",
        "Wanda (wanda-unstructured)": "wanda-unstructured",
        "SparseGPT (sparsegpt-unstructured)": "sparsegpt-unstructured",
    }
    rows = []
    total = len(sparsities) * len(criteria)
    for i, s in enumerate(sparsities):
        for j, (label, method) in enumerate(criteria.items()):
            progress((i * len(criteria) + j) / total, f"{method} at {s:.0%}")
            rows.append((label, s, _acc(subject, subject.prune(_plan(subject, method, s)))))
    df = pd.DataFrame(rows, columns=["criterion", "sparsity", "accuracy"])
    piv = df.pivot(index="sparsity", columns="criterion", values="accuracy")
    magnitude = piv["magnitude (l1-unstructured)"]
    aware = piv[["Wanda (wanda-unstructured)", "SparseGPT (sparsegpt-unstructured)"]]
    chance = (
        1.0 / max(int(subject.data.test.y.max()) + 1, 2) if subject.data.test.y is not None else 0.0
    )
    # High sparsity, where some criterion still works: where all are at chance there is nothing to
    # compare.
    judged = [s for s in sparsities if s >= 0.7 and piv.loc[s].max() > chance + 0.05]
    wins = [s for s in judged if aware.loc[s].max() > magnitude.loc[s]]
    dense = _acc(subject, subject.model)
    text = f"Every layer pruned at the same ratio, no retraining (dense {pct(dense)}). "
    if not judged:
        holds = None
        text += (
            "From 70% sparsity on, every criterion is at chance on this model: there is nothing to"
            " compare, so the claim cannot be judged here."
        )
    else:
        holds = len(wins) == len(judged)
        top = max(judged)
        text += (
            f"At {top:.0%} sparsity, the highest where a criterion still beats chance: magnitude"
            f" {pct(magnitude.loc[top])}, Wanda {pct(piv.loc[top, 'Wanda (wanda-unstructured)'])},"
            f" SparseGPT {pct(piv.loc[top, 'SparseGPT (sparsegpt-unstructured)'])}. From 70% on, a"
            f" data-aware criterion beat magnitude at {len(wins)} of the {len(judged)} sparsities"
            " where any criterion still worked. "
            + (
                "The claim holds here. "
                if holds
                else "The claim does not hold at every one of them on this model. "
            )
        )
    text += (
        f"Both read {_calibration_size(subject)} calibration samples; SparseGPT also updates the"
        " weights it keeps, Wanda only chooses which go."
    )
    fig = lines(
        df,
        "sparsity",
        "accuracy",
        "criterion",
        "Criteria before any retraining",
        "sparsity",
        "accuracy",
    )
    return LearnResult(
        "criteria",
        df,
        fig,
        text,
        holds,
        subject.model_spec,
        _plan(subject, "sparsegpt-unstructured", 0.7),
    )


def _calibration_size(subject: Subject) -> int:
    found = subject.data.calibration()
    return min(len(found[0]), CALIBRATION_SAMPLES) if found is not None else 0


def scope_sparsity(subject: Subject, ratio: float) -> pd.DataFrame:
    """Per-layer sparsity of L1 pruning at ``ratio``: the same ratio everywhere vs global
    ranking."""
    rows = []
    for scope in ("local", "global"):
        pruned = subject.prune(_plan(subject, "l1-unstructured", ratio, scope))
        modules = dict(pruned.named_modules())
        for name in subject.layer_names:
            w = modules[name].weight
            rows.append(
                (
                    name,
                    "same ratio in every layer" if scope == "local" else "global ranking",
                    1 - int(torch.count_nonzero(w)) / w.numel(),
                )
            )
    return pd.DataFrame(rows, columns=["layer", "scope", "sparsity"])


def scope_figure(df: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for scope, part in df.groupby("scope", sort=False):
        fig.add_trace(go.Bar(x=part.layer, y=part.sparsity, name=str(scope)))
    fig.update_layout(
        barmode="group",
        yaxis_title="share of the layer's weights zeroed",
        yaxis_tickformat=".0%",
        height=320,
        margin=dict(l=40, r=20, t=30, b=40),
        legend=dict(orientation="h", y=1.12),
    )
    return fig


EXPERIMENTS: dict[str, Experiment] = {
    e.key: e
    for e in [
        Experiment(
            "magnitude",
            "Magnitude beats random",
            "At the same sparsity, removing the smallest weights hurts less "
            "than removing random ones.",
            "zoo:digits-mlp",
            magnitude_vs_random,
        ),
        Experiment(
            "global",
            "Global beats uniform",
            "At high sparsity, ranking weights across all layers beats the same "
            "ratio in every layer.",
            "zoo:digits-cnn",
            global_vs_uniform,
        ),
        Experiment(
            "sensitivity",
            "Layers differ",
            "Some layers tolerate far more pruning than others.",
            "zoo:digits-cnn",
            layer_sensitivity,
        ),
        Experiment(
            "finetune",
            "Fine-tuning recovers",
            "A few epochs of fine-tuning win back most of what pruning cost.",
            "zoo:digits-mlp",
            finetune_recovers,
        ),
        Experiment(
            "zeros",
            "Zeros are not speed",
            "Unstructured zeros shrink the compressed file but not dense-CPU "
            "latency; removing channels cuts latency.",
            "zoo:digits-cnn",
            zeros_vs_removal,
        ),
        Experiment(
            "int8",
            "Pruning + int8",
            "Pruning plus int8 quantization cuts the size by 80% or more.",
            "zoo:digits-cnn",
            prune_plus_int8,
        ),
        Experiment(
            "cliff", "The cliff", "Past some sparsity, accuracy collapses.", "zoo:digits-cnn", cliff
        ),
        Experiment(
            "regularisation",
            "Pruning as regularisation",
            "A lightly pruned model may generalise better.",
            "zoo:digits-mlp",
            regularisation,
        ),
        Experiment(
            "seeds",
            "Instability",
            "Results vary with the seed; small differences can be noise.",
            "zoo:digits-mlp",
            instability,
        ),
        Experiment(
            "criteria",
            "Data beats magnitude",
            "At high sparsity, criteria that read calibration data (Wanda, "
            "SparseGPT) keep far more accuracy than magnitude, before any retraining.",
            "zoo:digits-cnn",
            data_aware_criteria,
        ),
    ]
}


# When to prune and the two paper tables (explorer/learn_schedules.py).
EXPERIMENTS.update({e.key: e for e in SCHEDULE_EXPERIMENTS})


def run_experiment(
    key: str, subject: Subject | None = None, on_progress: Progress = no_progress
) -> LearnResult:
    """Run one experiment on its zoo model (or on ``subject`` if given)."""
    experiment = EXPERIMENTS[key]
    subject = subject if subject is not None else Subject(experiment.model)
    start = time.perf_counter()
    result = experiment.run(subject, on_progress)
    result.seconds = time.perf_counter() - start
    on_progress(1.0, "done")
    return result
