"""Two published pruning results, reproduced on the zoo: ``benchmarks/papers.py`` runs them in full,
the Learn page in short versions. Every verdict is computed from the measured numbers.

**Han et al. 2015** (Learning both Weights and Connections, arXiv 1506.02626), Tables 1-3: iterative
magnitude pruning with retraining removes about 12x of LeNet-300-100's and LeNet-5's weights with no
more error than dense, and keeps a very different share per layer. Their rule: a layer's weights
below a threshold go, the threshold being a quality parameter times the standard deviation of the
layer's weights; each layer's quality parameter comes from its sensitivity (the most sensitive layer
gets the smallest threshold), and pruning alternates with retraining at a tenth of the learning
rate. Here: per-layer sensitivity without retraining gives q_l (the largest q on a grid whose
pruning alone keeps validation accuracy within ``tolerance`` of dense); one common factor λ scales
every threshold λ·q_l·σ_l (σ_l of the trained layer); round r of k sets λ, by bisection on the
current weights, so that the parameters left are compression^(-r/k) of the total (each round
removes the same share of what is left, ending at 1/12 as in Table 1), then retrains. Shares per
layer are not set by hand: they come out of the rule.

**MNIST-1D's lottery-ticket notebook** (greydanus/mnist1d, ``5. lottery_tickets.ipynb``): the MLP
40-500-500(residual)-10 trained 1501 steps of 100 signals at a constant lr of 0.02 (Adam), tested
every 100 steps; iterative magnitude pruning prunes every layer to the same sparsity, rewinds the
survivors to their initial values and retrains; random pruning draws a random mask of the same
sparsity on the same initialisation. Its 4,000 training signals (``mnist1d_training``), its test
signals; its metric: the best test accuracy seen while training. Two differences, said in the
output: the notebook prunes biases too (we prune weights only), and takes ~100 rounds on a linear
ramp (we take the rounds in ``sparsities``).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.data import Dataset, Split, mnist1d_training
from explorer.evaluate import evaluate_torch
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Progress, no_progress
from explorer.prune import apply_plan
from explorer.recover import ZeroKeeper, finetune
from explorer.subject import Subject

__all__ = [
    "HAN",
    "LOTTERY",
    "HanResult",
    "LotteryResult",
    "han_iterative",
    "han_ratios",
    "han_sensitivity",
    "lottery_mnist1d",
    "order_agreement",
]

# The papers' numbers (../shared/research/state-of-the-art-2026-12.md, section 6).
HAN: dict[str, dict[str, Any]] = {
    "mnist-lenet300": {
        "dense_error": 0.0164,
        "pruned_error": 0.0159,
        "params": (267_000, 22_000),
        "compression": 12,
        "kept": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
        "table": 2,
    },
    "mnist-lenet5": {
        "dense_error": 0.0080,
        "pruned_error": 0.0077,
        "params": (431_000, 36_000),
        "compression": 12,
        "kept": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
        "table": 3,
    },
}
# Best test accuracy (%) over training, trials 0 / 1.
LOTTERY: dict[str, dict[float, tuple[float, float]]] = {
    "magnitude": {0.0: (66.4, 65.4), 0.9: (74.3, 74.1), 0.95: (71.8, 70.8), 0.99: (41.9, 42.4)},
    "random": {0.0: (63.8, 65.2), 0.9: (64.6, 65.7), 0.95: (58.0, 56.1), 0.99: (16.9, 17.1)},
}
# layers whose kept shares differ by more than this factor in the paper must keep their order
CLEAR_RATIO = 1.5


def order_agreement(ours: dict[str, float], paper: dict[str, float]) -> tuple[bool, list[str]]:
    """Do ``ours`` keep the order of every pair of layers that ``paper`` separates clearly (their
    shares differ by more than ``CLEAR_RATIO``)? Returns the verdict and one line per such pair."""
    lines, ok = [], True
    names = list(paper)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            hi, lo = (a, b) if paper[a] >= paper[b] else (b, a)
            if paper[hi] <= CLEAR_RATIO * paper[lo]:
                continue
            agree = ours[hi] > ours[lo]
            ok &= agree
            lines.append(
                f"{hi} > {lo}: paper {100 * paper[hi]:.0f}% > {100 * paper[lo]:.0f}%, ours "
                f"{100 * ours[hi]:.1f}% {'>' if agree else '<='} {100 * ours[lo]:.1f}%"
            )
    return ok, lines


# --- Han et al. 2015 -----------------------------------------------------------------------------


def _weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach() for n in names}


def han_ratios(model: nn.Module, thresholds: dict[str, float]) -> dict[str, float]:
    """Han's rule as plan ratios: the share of each layer's weights whose magnitude is below its
    threshold (weights already zero count as below)."""
    w = _weights(model, list(thresholds))
    return {n: float((w[n].abs() < t).float().mean()) for n, t in thresholds.items()}


def _plan(ratios: dict[str, float], model_spec: str) -> PruningPlan:
    return PruningPlan(
        method="l1-unstructured",
        layers={n: LayerRule(min(r, 0.9999)) for n, r in ratios.items()},
        model=model_spec,
    )


def han_sensitivity(
    subject: Subject, grid: Sequence[float], split: Split | None = None
) -> list[dict[str, Any]]:
    """Each layer alone pruned at thresholds q·σ for every q of ``grid``, no retraining: rows of
    layer, q, share pruned, validation accuracy."""
    split = split or subject.data.val or subject.data.test
    sigma = {n: float(w.std()) for n, w in _weights(subject.model, subject.layer_names).items()}
    rows = []
    for name in subject.layer_names:
        for q in grid:
            ratios = han_ratios(subject.model, {name: q * sigma[name]})
            pruned = apply_plan(
                subject.model, _plan(ratios, subject.model_spec), subject.example_input
            )
            rows.append(
                {
                    "layer": name,
                    "q": q,
                    "pruned": ratios[name],
                    "val_accuracy": evaluate_torch(pruned, split)[0],
                }
            )
    return rows


def _solve_scale(
    model: nn.Module,
    base: dict[str, float],
    bias_params: int,
    total_params: int,
    compression: float,
) -> float:
    """The factor λ for which thresholds λ·base leave ``total_params / compression`` parameters
    (biases are kept), by bisection (the count falls as λ grows)."""
    target = total_params / compression - bias_params
    w = _weights(model, list(base))

    def kept(lam: float) -> int:
        return sum(int((w[n].abs() >= lam * t).sum()) for n, t in base.items())

    lo, hi = 0.0, 1.0
    while kept(hi) > target and hi < 1e6:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) > target else (lo, mid)
    return hi


@dataclass
class HanResult:
    model_spec: str
    dense_error: float
    quality: dict[str, float]  # q_l from sensitivity
    sigma: dict[str, float]
    rounds: list[dict[str, Any]] = field(
        default_factory=list
    )  # per round: kept per layer, compression, error
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return self.rounds[-1]

    def verdicts(self) -> list[tuple[str, bool, str]]:
        """(claim, holds, why) from the measured numbers."""
        paper = HAN[self.model_spec.removeprefix("zoo:")]
        f = self.final
        ok = f["compression"] >= 11.0 and f["error"] <= self.dense_error
        why = (
            f"{f['compression']:.1f}x fewer parameters ({f['params']:,} of {f['params_total']:,})"
            f" at {100 * f['error']:.2f}% test error against {100 * self.dense_error:.2f}% dense: "
            + (
                "no more error"
                if f["error"] <= self.dense_error
                else f"{100 * (f['error'] - self.dense_error):.2f} points more error"
            )
            + ("" if f["compression"] >= 11.0 else ", and short of about 12x")
        )
        shape_ok, lines = order_agreement(f["kept"], paper["kept"])
        return [
            (f"about {paper['compression']}x fewer weights with no more error than dense", ok, why),
            (
                f"the kept share per layer has Table {paper['table']}'s shape",
                shape_ok,
                "; ".join(lines),
            ),
        ]


def han_iterative(
    subject: Subject,
    *,
    rounds: int = 4,
    epochs: int = 3,
    lr: float = 2e-4,
    compression: float = 12.0,
    tolerance: float = 0.01,
    grid: Sequence[float] = tuple(np.round(np.arange(0.0, 3.01, 0.25), 2)),
    on_progress: Progress = no_progress,
) -> HanResult:
    """Han et al.'s iterative pruning on ``subject`` (see the module doc). ``lr``: retraining rate,
    a tenth of the zoo's 2e-3 as in the paper."""
    start = time.perf_counter()
    test = subject.data.test
    names = subject.layer_names
    modules = dict(subject.model.named_modules())
    sigma = {n: float(w.std()) for n, w in _weights(subject.model, names).items()}
    weight_params = {n: modules[n].weight.numel() for n in names}
    total_params = sum(p.numel() for p in subject.model.parameters())
    bias_params = total_params - sum(weight_params.values())
    dense_error = 1 - evaluate_torch(subject.model, test)[0]

    on_progress(0.02, "sensitivity of each layer (no retraining)")
    rows = han_sensitivity(subject, grid)
    val = subject.data.val or test
    dense_val = evaluate_torch(subject.model, val)[0]
    quality = {}
    for name in names:
        ok = [
            r["q"]
            for r in rows
            if r["layer"] == name and r["val_accuracy"] >= dense_val - tolerance
        ]
        quality[name] = max(ok) if ok else min(q for q in grid if q > 0)
    base = {n: quality[n] * sigma[n] for n in names}
    if any(
        t == 0 for t in base.values()
    ):  # a layer with q = 0 (no tolerance at all): smallest step
        base = {n: t or min(q for q in grid if q > 0) * sigma[n] for n, t in base.items()}
    result = HanResult(
        subject.model_spec,
        dense_error,
        quality,
        sigma,
        settings={
            "rounds": rounds,
            "epochs": epochs,
            "lr": lr,
            "compression": compression,
            "tolerance": tolerance,
            "grid": list(grid),
        },
    )

    def record(model: nn.Module, r: int, scale: float) -> None:
        w = _weights(model, names)
        nonzero = {n: int(torch.count_nonzero(w[n])) for n in names}
        params = sum(nonzero.values()) + bias_params
        result.rounds.append(
            {
                "round": r,
                "scale": scale,
                "kept": {n: nonzero[n] / weight_params[n] for n in names},
                "params": params,
                "params_total": total_params,
                "compression": total_params / params,
                "error": 1 - evaluate_torch(model, test)[0],
                "seconds": time.perf_counter() - start,
            }
        )

    model = subject.model
    record(model, 0, 0.0)
    for r in range(1, rounds + 1):
        on_progress(
            0.05 + 0.95 * (r - 1) / rounds,
            f"round {r}/{rounds}: prune, then retrain {epochs} epoch(s)",
        )
        # each round removes the same share of what is left: compression^(r/k) after round r
        scale = _solve_scale(model, base, bias_params, total_params, compression ** (r / rounds))
        ratios = han_ratios(model, {n: scale * t for n, t in base.items()})
        model = apply_plan(model, _plan(ratios, subject.model_spec), subject.example_input)
        model = finetune(model, subject.data, epochs, lr=lr, seed=r).model
        record(model, r, scale)
    result.seconds = time.perf_counter() - start
    on_progress(1.0, "done")
    return result


# --- the MNIST-1D lottery-ticket notebook --------------------------------------------------------


def _train_notebook(
    model: nn.Module,
    train: Split,
    test: Split,
    *,
    steps: int,
    lr: float,
    batch: int,
    eval_every: int,
) -> tuple[nn.Module, list[float]]:
    """The notebook's ``train_model``: Adam at a constant rate, batches taken in order, test
    accuracy
    every ``eval_every`` steps; zeros kept zero (``ZeroKeeper``). Returns the model and the
    accuracies.
    """
    model = copy.deepcopy(model).train()
    model.requires_grad_(True)
    keeper = ZeroKeeper(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    assert train.y is not None
    accs = []
    for step in range(steps):
        start = (step * batch) % len(train)
        loss = nn.functional.cross_entropy(
            model(train.x[start : start + batch]), train.y[start : start + batch]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        keeper.apply()
        if step % eval_every == 0 or step == steps - 1:
            model.eval()
            accs.append(evaluate_torch(model, test)[0])
            model.train()
    model.requires_grad_(False)
    return model.eval(), accs


@dataclass
class LotteryResult:
    rows: list[dict[str, Any]] = field(
        default_factory=list
    )  # criterion, trial, sparsity, best/last accuracy
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def mean(self, criterion: str, sparsity: float, key: str = "best") -> float:
        vals = [
            r[key]
            for r in self.rows
            if r["criterion"] == criterion and math.isclose(r["sparsity"], sparsity)
        ]
        return statistics.mean(vals) if vals else float("nan")

    def verdicts(self) -> list[tuple[str, bool, str]]:
        dense, imp90 = self.mean("dense", 0.0), self.mean("magnitude", 0.9)
        mag95, rnd95 = self.mean("magnitude", 0.95), self.mean("random", 0.95)
        n = len({r["trial"] for r in self.rows})
        first = (
            f"best test accuracy, mean of {n} trial(s): iterative magnitude pruning at 90% "
            f"{100 * imp90:.1f}% vs dense {100 * dense:.1f}% ({100 * (imp90 - dense):+.1f} points)"
        )
        second = (
            f"at 95%: random {100 * rnd95:.1f}% vs magnitude {100 * mag95:.1f}% "
            f"({100 * (mag95 - rnd95):.1f} points below; 'far' taken as 5 points or more)"
        )
        return [
            ("at 90% sparsity iterative magnitude pruning beats dense", imp90 > dense, first),
            ("at 95% random pruning falls far below magnitude", mag95 - rnd95 >= 0.05, second),
        ]


def lottery_mnist1d(
    *,
    trials: int = 2,
    sparsities: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    random_at: Sequence[float] = (0.9, 0.95),
    steps: int = 1501,
    lr: float = 0.02,
    batch: int = 100,
    eval_every: int = 100,
    hidden: int = 500,
    on_progress: Progress = no_progress,
) -> LotteryResult:
    """The notebook's experiment on ``zoo:mnist1d-mlp``'s architecture (see the module doc): per
    trial, one initialisation (seed = trial); magnitude: train, then for each sparsity prune every
    layer to it (from the last trained weights), rewind the survivors, retrain; random: a random
    mask of each sparsity in ``random_at`` on the same initialisation, trained."""
    from explorer.models.zoo import Mnist1dMLP

    start = time.perf_counter()
    data: Dataset = mnist1d_training()
    assert data.train is not None
    names = ["linear1", "linear2", "linear3"]
    example = data.test.x[:1]
    out = LotteryResult(
        settings={
            "trials": trials,
            "sparsities": list(sparsities),
            "random_at": list(random_at),
            "steps": steps,
            "lr": lr,
            "batch": batch,
            "eval_every": eval_every,
            "hidden": hidden,
            "train": len(data.train),
            "test": len(data.test),
        }
    )
    jobs = trials * (len(set(sparsities) | {0.0}) + len(random_at))
    done = 0

    def train(model: nn.Module, label: str) -> tuple[nn.Module, list[float]]:
        nonlocal done
        on_progress(done / jobs, label)
        done += 1
        return _train_notebook(
            model, data.train, data.test, steps=steps, lr=lr, batch=batch, eval_every=eval_every
        )

    def plan(method: str, s: float) -> PruningPlan:
        return PruningPlan(method=method, layers={n: LayerRule(s) for n in names})

    def ticket(init: nn.Module, pruned: nn.Module) -> nn.Module:
        t = copy.deepcopy(init)
        with torch.no_grad():
            for n in names:
                keep = dict(pruned.named_modules())[n].weight != 0
                dict(t.named_modules())[n].weight.mul_(keep)
        return t

    def row(criterion: str, trial: int, s: float, trained: nn.Module, accs: list[float]) -> None:
        modules = dict(trained.named_modules())
        nonzero = sum(int(torch.count_nonzero(modules[n].weight)) for n in names)
        out.rows.append(
            {
                "criterion": criterion,
                "trial": trial,
                "sparsity": s,
                "best": max(accs),
                "last": accs[-1],
                "nonzero": nonzero,
                "seconds": time.perf_counter() - start,
            }
        )

    for trial in range(trials):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trial)
            init = Mnist1dMLP(hidden).eval()
        model = None
        for s in sparsities:
            if s == 0 or model is None:
                model, accs = train(init, f"trial {trial}: dense")
                row("dense", trial, 0.0, model, accs)
                if s == 0:
                    continue
            pruned = apply_plan(model, plan("l1-unstructured", s), example)
            model, accs = train(ticket(init, pruned), f"trial {trial}: magnitude {s:.0%}")
            row("magnitude", trial, s, model, accs)
        for s in random_at:
            pruned = apply_plan(init, plan("random-unstructured", s), example, seed=trial)
            trained, accs = train(ticket(init, pruned), f"trial {trial}: random {s:.0%}")
            row("random", trial, s, trained, accs)
    out.seconds = time.perf_counter() - start
    on_progress(1.0, "done")
    return out
