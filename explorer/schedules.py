"""When to prune: one-shot, iterative, gradual, at initialisation (SNIP), lottery ticket,
regularised.

A schedule takes a plan (which layers, how much, by which method) and decides when the pruning
happens relative to training. Every schedule

- reaches the plan's exact sparsity at the end: each pruning step goes through
  ``explorer.prune.apply_plan`` (so any registered method works where the schedule allows it),
  and the last step prunes to the plan's ratios (SNIP, which ranks globally, to the plan's total);
- keeps zeros zero while it trains (``explorer.recover.finetune`` and its ``ZeroKeeper``);
- measures every step (test accuracy and loss, sparsity of the plan's layers, validation scores
  where training ran) into a ``ScheduleResult`` with ``to_dict``;
- reports progress through ``on_progress(fraction, message)`` and stops when ``should_stop()``
  returns True (``stopped="cancelled"``, with the reason).

The schedules (``SCHEDULES`` lists their options and defaults):

one-shot
    Prune the trained model once, then fine-tune ``epochs`` (0: not at all). What export did before.
iterative
    ``rounds`` rounds of prune-then-fine-tune (Han et al. 2015). Round j of k prunes to a
    ``geometric`` ramp (default: each round removes the same share of what is left, the kept
    fraction is (1 - r)^(j/k)) or a ``linear`` one (r * j/k) of every layer's ratio r.
gradual
    Prune while training (Zhu & Gupta 2017): from step t0 on, every ``frequency`` (Δt) steps the
    masks are recomputed at s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))^3, s_f each layer's ratio,
    until step t0 + nΔt (``start`` and ``end`` are fractions of the training's steps); the
    remaining epochs recover at the final sparsity.
snip
    Prune at initialisation (Lee et al. 2019): a fresh initialisation of the architecture, the
    connection sensitivity |dL/dw * w| on one batch, one global ranking over the plan's layers to
    the plan's total number of zeros, then the sparse network trained from scratch.
lottery
    Lottery ticket (Frankle & Carbin 2019): train a fresh initialisation, then ``rounds`` times:
    prune (geometric ramp), rewind the survivors to their initial values (or to their values after
    ``rewind`` steps of the first training), retrain. ``reinit`` re-initialises the survivors at
    random instead: the control experiment.
regularized
    Sparsity-inducing regularisation while training, then prune, then fine-tune: L1 on the
    batch-norm scales (network slimming, Liu et al. 2017: ``bn-l1``) or group lasso on the output
    channels of the plan's layers (``group-lasso``; ``auto`` picks bn-l1 for a ``bn-scale``
    method, group lasso otherwise).

Methods: gradual, snip and lottery keep masks through training, so their plan must zero weights
(unstructured or N:M); removing channels is for one-shot, iterative and regularized. SNIP brings
its own criterion (the plan's method must be unstructured and is replaced by the saliency).

One concern: running a schedule. The six runners are short and share one context (training with
zeros kept, exact pruning steps, measuring every step); the schedules' names and options, which
the plan reads, are in :mod:`explorer.schedule_spec`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from explorer.data import Dataset, Split
from explorer.errors import DataError, ScheduleError
from explorer.evaluate import evaluate_torch
from explorer.inputs import run_model
from explorer.inspect import PRUNABLE_TYPES
from explorer.methods import get_method
from explorer.models.outputs import logits_of
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Progress, no_progress
from explorer.prune import apply_plan, kept_channels
from explorer.recover import FinetuneResult, batchnorm_layers, finetune, not_recoverable
from explorer.schedule_spec import SCHEDULES, Option, ScheduleInfo, ScheduleSpec, schedule_names

if TYPE_CHECKING:
    from explorer.subject import Subject

__all__ = [
    "SCHEDULES",
    "Option",
    "ScheduleInfo",
    "ScheduleResult",
    "ScheduleSpec",
    "StepRecord",
    "cubic_sparsity",
    "ramp",
    "run_schedule",
    "schedule_names",
    "snip_saliency",
]


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """One measured step. ``phase``: ``start`` (the model a schedule begins from), ``prune``,
    ``mask update`` (gradual), ``rewind`` (lottery), ``train`` (one epoch of training)."""

    phase: str
    round: int  # 0 before the first round (or in schedules without rounds)
    epoch: int | None  # epoch of the training phase (1-based); None outside training
    step: int | None  # optimizer step of the training phase (mask updates)
    target: (
        float | None
    )  # the plan's ratio asked for at this step, averaged over its layers by weights
    sparsity: float  # measured: zero or removed weights of the plan's layers / their dense weights
    nonzero: int  # nonzero weights of the plan's layers
    accuracy: float | None  # test split (agreement with dense without labels)
    loss: float | None
    val_accuracy: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    seconds: float = 0.0  # since the schedule started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScheduleResult:
    """The model a schedule produced and every step on the way."""

    name: str
    settings: dict[str, Any]  # every option, defaults filled in
    model: nn.Module
    steps: list[StepRecord] = field(default_factory=list)
    stopped: str = "completed"  # or "cancelled"
    stop_reason: str = ""
    seconds: float = 0.0
    target: float = 0.0  # the plan's sparsity over its layers (what the final model must have)
    notes: list[str] = field(default_factory=list)
    recovery: dict[str, Any] | None = None  # the last training phase (FinetuneResult.to_dict())

    @property
    def final(self) -> StepRecord:
        return self.steps[-1]

    def rows(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (the ``schedule`` entry of metrics.json)."""
        return {
            "name": self.name,
            "settings": dict(self.settings),
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "target_sparsity": self.target,
            "sparsity": self.final.sparsity if self.steps else None,
            "notes": list(self.notes),
            "steps": self.rows(),
        }


# --- ramps ---------------------------------------------------------------------------------------


def ramp(ratio: float, j: int, k: int, kind: str = "geometric") -> float:
    """The ratio round ``j`` of ``k`` asks for on the way to ``ratio`` (round k: ``ratio``
    itself)."""
    if j >= k:
        return ratio
    if kind == "linear":
        return ratio * j / k
    return 1.0 - (1.0 - ratio) ** (j / k)


def cubic_sparsity(final: float, initial: float, j: int, n: int) -> float:
    """Zhu & Gupta's s_t at update ``j`` of ``n`` (t = t0 + jΔt): s_f + (s_i - s_f)(1 - j/n)^3."""
    if n <= 0 or j >= n:
        return final
    initial = min(initial, final)
    return final + (initial - final) * (1.0 - j / n) ** 3


# --- the pieces every schedule uses -------------------------------------------------------------


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


class _Context:
    """What one run needs: the subject's data and layers, timing, progress, cancel, records."""

    def __init__(
        self,
        subject: Subject,
        plan: PruningPlan,
        spec: ScheduleSpec,
        on_progress: Progress,
        should_stop: Callable[[], bool],
    ) -> None:
        self.subject = subject
        self.plan = plan
        self.spec = spec
        self.options = spec.resolved()
        self.data: Dataset = subject.data
        self.example = subject.example_input
        self.calibration = subject.calibration  # what data-aware methods score with
        self.names = list(plan.layers)
        self.dense_numel = {n: _numel(subject.inventory[n].shape) for n in self.names}
        self.start = time.perf_counter()
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.steps: list[StepRecord] = []
        self.notes: list[str] = []
        self.stop_reason = ""
        self.last_recovery: dict[str, Any] | None = None
        self.total_units = 1.0
        self.done_units = 0.0
        test = self.data.test
        self.reference = None
        if test.y is None:  # unlabelled: accuracy is agreement with the dense model
            with torch.no_grad():
                self.reference = torch.cat(
                    [
                        logits_of(run_model(subject.model, test.x[i : i + 512]))
                        for i in range(0, len(test), 512)
                    ]
                ).numpy()

    # progress over the whole schedule, in units of training epochs
    def progress(self, units: float, message: str) -> None:
        self.on_progress(min(1.0, (self.done_units + units) / self.total_units), message)

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def sparsity(self, model: nn.Module) -> tuple[float, int]:
        modules = dict(model.named_modules())
        nonzero = sum(int(torch.count_nonzero(modules[n].weight)) for n in self.names)
        total = sum(self.dense_numel.values())
        return (1.0 - nonzero / total if total else 0.0), nonzero

    def target(self, plan: PruningPlan) -> float:
        total = sum(self.dense_numel.values())
        if not total:
            return 0.0
        if plan.scope == "global":
            return float(plan.ratio or 0.0)
        return sum(plan.layers[n].ratio * self.dense_numel[n] for n in self.names) / total

    def test_scores(self, model: nn.Module) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        try:
            return evaluate_torch(model, self.data.test, self.reference)
        finally:
            model.train(was_training)

    def record(
        self,
        phase: str,
        model: nn.Module,
        *,
        at: int = 0,
        epoch: int | None = None,
        step: int | None = None,
        target: float | None = None,
        val: tuple[Any, Any] = (None, None),
        train_loss: float | None = None,
    ) -> StepRecord:
        """Measure ``model`` now and append the step (``at``: the round it belongs to)."""
        sparsity, nonzero = self.sparsity(model)
        acc, loss = self.test_scores(model)
        rec = StepRecord(
            phase,
            at,
            epoch,
            step,
            target,
            sparsity,
            nonzero,
            acc,
            loss,
            val[0],
            val[1],
            train_loss,
            self.seconds(),
        )
        self.steps.append(rec)
        return rec

    def cancelled(self, where: str) -> bool:
        if self.stop_reason:
            return True
        if self.should_stop():
            self.stop_reason = f"cancelled {where}"
            return True
        return False

    def train(
        self,
        model: nn.Module,
        epochs: int,
        *,
        at: int,
        target: float | None,
        label: str,
        lr: float,
        recalibrate: bool = True,
        **kwargs: Any,
    ) -> nn.Module:
        """``finetune`` with this run's progress, cancel and per-epoch records."""
        rows: dict[int, int] = {}  # epoch -> index of its record

        def on_epoch(epoch: int, student: nn.Module) -> None:
            rows[epoch] = len(self.steps)
            self.record("train", student, at=at, epoch=epoch, target=target)

        base = self.done_units

        def progress(fraction: float, message: str) -> None:
            self.on_progress(
                min(1.0, (base + fraction * epochs) / self.total_units), f"{label}: {message}"
            )

        result: FinetuneResult = finetune(
            model,
            self.data,
            epochs,
            lr=lr,
            recalibrate=recalibrate,
            seed=self.options["seed"] + max(at - 1, 0),
            on_progress=progress,
            should_stop=self.should_stop,
            on_epoch=on_epoch,
            **kwargs,
        )
        # The epoch rows were measured on the model as each epoch ended; add what finetune
        # validated.
        for h in result.history[1:]:
            if h.epoch in rows:
                i = rows[h.epoch]
                self.steps[i] = replace(
                    self.steps[i],
                    val_accuracy=h.val_accuracy,
                    val_loss=h.val_loss,
                    train_loss=h.train_loss,
                )
        self.done_units = base + epochs
        self.last_recovery = result.to_dict()
        if result.stopped == "cancelled" and not self.stop_reason:
            self.stop_reason = f"cancelled during {label}, epoch {len(result.history)} of {epochs}"
        return result.model


_TINY = {
    dtype: torch.finfo(dtype).tiny
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


@torch.no_grad()
def _prune_step(
    model: nn.Module,
    plan: PruningPlan,
    example: torch.Tensor,
    seed: int,
    calibration: Split | None = None,
) -> nn.Module:
    """``apply_plan`` on ``model`` so that the plan's count of zeros is exact whatever the method.

    A weight that is already zero (pruned earlier) is set to the smallest normal float first: a
    criterion that ranks by magnitude prunes it again before anything else (masks stay nested), and
    one that does not (random) may keep it, alive again at ~1e-38 and trained from there, instead
    of silently counting a zero the plan did not ask for.
    """
    nudged = copy.deepcopy(model)
    modules = dict(nudged.named_modules())
    for name in plan.layers:
        if not get_method(plan.method_of(name)).structured:
            w = modules[name].weight
            w.masked_fill_(w == 0, _TINY.get(w.dtype, 1e-30))
    return apply_plan(nudged, plan, example, seed=seed, calibration=calibration)


def _keep_masks(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach() != 0 for n in names}


@torch.no_grad()
def _set_masks(
    model: nn.Module, keep: Mapping[str, torch.Tensor], source: nn.Module | None = None
) -> None:
    """Weights of ``model`` become ``source``'s (default: its own) where ``keep``, zero elsewhere;
    a kept weight that is exactly zero becomes the smallest normal float, so it trains."""
    modules = dict(model.named_modules())
    src = dict(source.named_modules()) if source is not None else modules
    for name, mask in keep.items():
        w, values = modules[name].weight, src[name].weight.detach()
        alive = torch.where(
            values == 0, torch.full_like(values, _TINY.get(values.dtype, 1e-30)), values
        )
        w.copy_(torch.where(mask, alive, torch.zeros_like(values)))


def _scaled(plan: PruningPlan, fn: Callable[[float], float]) -> PruningPlan:
    """The plan with every ratio r replaced by fn(r) (the global ratio too)."""
    layers = {n: LayerRule(fn(rule.ratio), rule.method) for n, rule in plan.layers.items()}
    return replace(plan, layers=layers, ratio=fn(plan.ratio) if plan.ratio is not None else None)


def _relative_plan(
    plan: PruningPlan, model: nn.Module, dense_channels: Mapping[str, int]
) -> PruningPlan:
    """A round's plan for a model already shrunk by earlier rounds: structured layers get the ratio
    that leaves exactly the channels the round's ratio leaves on the dense layer."""
    modules = dict(model.named_modules())
    layers = {}
    for name, rule in plan.layers.items():
        if get_method(plan.method_of(name)).structured:
            n0, n_cur = dense_channels[name], int(modules[name].weight.shape[0])
            keep = kept_channels(n0, rule.ratio)
            ratio = (
                0.0 if n_cur <= keep else (n_cur - keep + 0.5) / n_cur
            )  # int(ratio * n_cur) == n_cur - keep
            layers[name] = LayerRule(ratio, rule.method)
        else:
            layers[name] = rule
    return replace(plan, layers=layers)


def _structured_layers(plan: PruningPlan) -> list[str]:
    return [n for n in plan.layers if get_method(plan.method_of(n)).structured]


# --- SNIP ----------------------------------------------------------------------------------------


def snip_saliency(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity |dL/dw * w| of the weights of layers ``names`` on one batch.

    L is the cross-entropy of ``model`` on ``(x, y)``, the model in training mode (batch norm on
    batch statistics) on a copy, so ``model`` itself is untouched. (The lead ports this criterion
    to the method registry as ``taylor-unstructured``.)
    """
    work = copy.deepcopy(model).train()
    work.requires_grad_(False)
    modules = dict(work.named_modules())
    weights = [modules[n].weight for n in names]
    for w in weights:
        w.requires_grad_(True)
    loss = nn.functional.cross_entropy(work(x), y)
    grads = torch.autograd.grad(loss, weights)
    return {n: (g * w).abs().detach() for n, g, w in zip(names, grads, weights, strict=False)}


def _snip_keep(saliency: Mapping[str, torch.Tensor], n_zero: int) -> dict[str, torch.Tensor]:
    """One global ranking: the ``n_zero`` weights of lowest saliency go."""
    flat = torch.cat([s.reshape(-1) for s in saliency.values()])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_zero:
        keep[torch.topk(flat, n_zero, largest=False).indices] = False
    out, start = {}, 0
    for name, s in saliency.items():
        out[name] = keep[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


# --- checks --------------------------------------------------------------------------------------


def _check(subject: Subject, plan: PruningPlan, spec: ScheduleSpec) -> None:
    info, o = spec.info, spec.resolved()
    model, data = subject.model, subject.data
    trains = spec.name != "one-shot" or o["epochs"] > 0
    if trains:
        why = not_recoverable(model)
        if why:
            raise ScheduleError(f"schedule {spec.name!r}: {why}")
        if data.train is None:
            raise DataError(
                f"{data.spec}: schedule {spec.name!r} trains, and the data has no training split "
                "(an .npz with x_train and y_train, or a zoo data set)"
            )
        if data.train.y is None and not (spec.name == "one-shot" and o["distill"]):
            hint = (
                "distil from the dense model (one-shot with distill)"
                if spec.name == "one-shot"
                else "use one-shot with distill, which learns from the dense model instead"
            )
            raise DataError(
                f"{data.spec}: schedule {spec.name!r} trains on labels, and the training split has "
                f"none; {hint}"
            )
    if plan.blocks and spec.name != "one-shot":
        raise ScheduleError(
            f"schedule {spec.name!r} prunes in steps on the weights it trains; the plan removes"
            f" whole blocks {list(plan.blocks)}: use the one-shot schedule (the blocks go, then"
            " fine-tuning recovers), or drop 'blocks'"
        )
    structured = _structured_layers(plan)
    if info.masks_only and structured:
        raise ScheduleError(
            f"schedule {spec.name!r} keeps masks through training, so it zeroes weights; layer "
            f"{structured[0]!r} uses {plan.method_of(structured[0])!r}, which removes channels: "
            "use an unstructured or N:M method, or the one-shot, iterative or regularized schedule"
        )
    if spec.name == "snip":
        semi = [n for n in plan.layers if get_method(plan.method_of(n)).kind != "unstructured"]
        if semi:
            raise ScheduleError(
                "schedule 'snip' ranks single weights globally by connection sensitivity; layer "
                f"{semi[0]!r} uses {plan.method_of(semi[0])!r}: use an unstructured method "
                "(its criterion is replaced by SNIP's)"
            )
    if spec.name == "iterative" and structured and plan.scope == "global":
        raise ScheduleError(
            "schedule 'iterative' removes channels round by round from per-layer ratios; a global "
            "structured plan has none: use scope 'local'"
        )
    if spec.name == "regularized" and o["penalty"] == "bn-l1" and not batchnorm_layers(model):
        raise ScheduleError(
            "schedule 'regularized': penalty 'bn-l1' acts on batch-norm scales and "
            f"{subject.model_spec} has no batch-norm layer; use 'group-lasso'"
        )
    if spec.name == "lottery" and o["rewind"]:
        steps = o["epochs"] * _steps_per_epoch(len(data.train) if data.train is not None else 0)
        if o["rewind"] > steps:
            raise ScheduleError(
                f"schedule 'lottery': rewind to step {o['rewind']}, but the first training has "
                f"only {steps} steps ({o['epochs']} epoch(s))"
            )


_BATCH = 64  # finetune's batch size


def _steps_per_epoch(n: int, batch_size: int = _BATCH) -> int:
    """Optimizer steps of one epoch of ``finetune`` (a last batch of one sample is skipped)."""
    if n == 0:
        return 0
    batches = math.ceil(n / batch_size)
    last = n - (batches - 1) * batch_size
    return batches - (1 if last < 2 and batches > 1 else 0)


# --- the schedules -------------------------------------------------------------------------------


def _one_shot(ctx: _Context) -> nn.Module:
    o = ctx.options
    subject = ctx.subject
    ctx.record("start", subject.model, target=0.0)
    ctx.progress(0, "pruning")
    model = apply_plan(
        subject.model,
        ctx.plan,
        ctx.example,
        subject.inventory,
        seed=o["seed"],
        calibration=subject.calibration,
    )
    target = ctx.target(ctx.plan)
    ctx.record("prune", model, at=1, target=target)
    if o["epochs"] and not ctx.cancelled("before fine-tuning"):
        model = ctx.train(
            model,
            o["epochs"],
            at=1,
            target=target,
            label="fine-tuning",
            lr=o["lr"],
            distill_from=subject.model if o["distill"] else None,
        )
    return model


def _iterative(ctx: _Context) -> nn.Module:
    o = ctx.options
    k = o["rounds"]
    dense_channels = {n: ctx.subject.inventory[n].out_channels for n in ctx.names}
    model = ctx.subject.model
    ctx.record("start", model, target=0.0)
    for j in range(1, k + 1):
        if ctx.cancelled(f"before round {j} of {k}"):
            break
        round_plan = _scaled(ctx.plan, lambda r, j=j: ramp(r, j, k, o["ramp"]))
        target = ctx.target(round_plan)
        ctx.progress(0, f"round {j}/{k}: pruning to {target:.1%}")
        step_plan = _relative_plan(round_plan, model, dense_channels)
        model = _prune_step(model, step_plan, ctx.example, o["seed"], ctx.calibration)
        ctx.record("prune", model, at=j, target=target)
        model = ctx.train(
            model, o["epochs"], at=j, target=target, label=f"round {j}/{k}", lr=o["lr"]
        )
    return model


def _gradual(ctx: _Context) -> nn.Module:
    o = ctx.options
    assert ctx.data.train is not None
    per_epoch = _steps_per_epoch(len(ctx.data.train))
    total = o["epochs"] * per_epoch
    t0 = round(o["start"] * total)
    t_end = round(o["end"] * total)
    dt = o["frequency"]
    n = max(0, (t_end - t0) // dt)
    updates = {t0 + j * dt: j for j in range(n + 1)}
    last = t0 + n * dt
    ctx.notes.append(
        f"{total} steps ({per_epoch} per epoch); masks updated at steps {t0}..{last} every {dt}"
        f" ({n + 1} update(s)); the best epoch is chosen from epoch"
        f" {math.ceil(last / per_epoch) if per_epoch else 0} on, when the final sparsity is reached"
    )

    def plan_at(j: int) -> PruningPlan:
        return _scaled(ctx.plan, lambda r: cubic_sparsity(r, o["initial_sparsity"], j, n))

    def update(step: int, student: nn.Module) -> bool:
        j = updates.get(step)
        if j is None:
            return False
        plan_j = plan_at(j)
        pruned = _prune_step(student, plan_j, ctx.example, o["seed"], ctx.calibration)
        _set_masks(student, _keep_masks(pruned, ctx.names))
        ctx.record("mask update", student, at=j, step=step, target=ctx.target(plan_j))
        return True

    model = ctx.subject.model
    ctx.record("start", model, target=0.0)
    if 0 in updates:  # the update at t0 = 0 comes before the first step
        plan_0 = plan_at(updates[0])
        model = _prune_step(model, plan_0, ctx.example, o["seed"], ctx.calibration)
        ctx.record("mask update", model, at=updates[0], step=0, target=ctx.target(plan_0))
    keep_from = math.ceil(last / per_epoch) if per_epoch else 0
    return ctx.train(
        model,
        o["epochs"],
        at=0,
        target=None,
        label="gradual pruning",
        lr=o["lr"],
        on_step=update,
        keep_from=min(keep_from, o["epochs"]),
    )


def _fresh(ctx: _Context, seed: int) -> nn.Module:
    from explorer.models.reinit import fresh_model

    return fresh_model(ctx.subject.model, ctx.subject.model_spec, seed)


def _snip(ctx: _Context) -> nn.Module:
    o = ctx.options
    train = ctx.data.train
    assert train is not None and train.y is not None
    init = _fresh(ctx, o["seed"])
    ctx.record("start", init, target=0.0)
    g = torch.Generator().manual_seed(o["seed"])
    idx = torch.randperm(len(train), generator=g)[: o["batch"]]
    saliency = snip_saliency(init, train.x[idx], train.y[idx], ctx.names)
    if ctx.plan.scope == "global":
        n_zero = round(float(ctx.plan.ratio or 0.0) * sum(ctx.dense_numel.values()))
    else:
        n_zero = sum(round(ctx.plan.layers[n].ratio * ctx.dense_numel[n]) for n in ctx.names)
    model = copy.deepcopy(init)
    _set_masks(model, _snip_keep(saliency, n_zero), source=init)
    target = ctx.target(ctx.plan)
    ctx.notes.append(
        f"saliency |dL/dw * w| on {len(idx)} training samples at initialisation (seed {o['seed']});"
        f" {n_zero:,} weights of the lowest saliency zeroed, ranked across the plan's layers"
    )
    ctx.record("prune", model, at=1, target=target)
    if ctx.cancelled("before training"):
        return model
    return ctx.train(
        model,
        o["epochs"],
        at=1,
        target=target,
        label="training from scratch",
        lr=o["lr"],
        recalibrate=False,
    )


def _lottery(ctx: _Context) -> nn.Module:
    o = ctx.options
    k = o["rounds"]
    init = _fresh(ctx, o["seed"])
    ctx.record("start", init, target=0.0)
    rewind_state: dict[str, torch.Tensor] = {}

    def capture(step: int, student: nn.Module) -> bool:
        if step == o["rewind"]:
            rewind_state.update({n: t.detach().clone() for n, t in student.state_dict().items()})
        return False

    rewind_to = copy.deepcopy(init)
    model = ctx.train(
        init,
        o["epochs"],
        at=0,
        target=0.0,
        label="dense training",
        lr=o["lr"],
        recalibrate=False,
        on_step=capture if o["rewind"] else None,
    )
    if o["rewind"] and rewind_state:
        rewind_to.load_state_dict(rewind_state)
    ctx.notes.append(
        "survivors re-initialised at random each round (the control)"
        if o["reinit"]
        else (
            f"survivors rewound to their values after {o['rewind']} step(s) of the first training"
            if o["rewind"]
            else "survivors rewound to their initial values"
        )
    )
    for j in range(1, k + 1):
        if ctx.cancelled(f"before round {j} of {k}"):
            break
        round_plan = _scaled(ctx.plan, lambda r, j=j: ramp(r, j, k, o["ramp"]))
        target = ctx.target(round_plan)
        ctx.progress(0, f"round {j}/{k}: pruning to {target:.1%}")
        keep = _keep_masks(
            _prune_step(model, round_plan, ctx.example, o["seed"], ctx.calibration), ctx.names
        )
        source = _fresh(ctx, o["seed"] + 1000 * j) if o["reinit"] else rewind_to
        ticket = copy.deepcopy(source)
        _set_masks(ticket, keep, source=source)
        ctx.record("rewind", ticket, at=j, target=target)
        model = ctx.train(
            ticket,
            o["epochs"],
            at=j,
            target=target,
            label=f"round {j}/{k}",
            lr=o["lr"],
            recalibrate=False,
        )
    return model


def _penalty(ctx: _Context) -> tuple[str, Callable[[nn.Module], torch.Tensor]]:
    o = ctx.options
    kind = o["penalty"]
    if kind == "auto":
        methods = {ctx.plan.method_of(n) for n in ctx.names} | {ctx.plan.method}
        kind = (
            "bn-l1"
            if any(m.startswith("bn-scale") for m in methods)
            and batchnorm_layers(ctx.subject.model)
            else "group-lasso"
        )
    strength = float(o["strength"])
    names = list(ctx.names)

    if kind == "bn-l1":
        bn_names = set(batchnorm_layers(ctx.subject.model))

        def bn_l1(model: nn.Module) -> torch.Tensor:
            terms = [
                m.weight.abs().sum()
                for n, m in model.named_modules()
                if n in bn_names and m.weight is not None
            ]
            return strength * torch.stack(terms).sum() if terms else torch.zeros(())

        return kind, bn_l1

    def group_lasso(model: nn.Module) -> torch.Tensor:
        modules = dict(model.named_modules())
        terms = [
            modules[n].weight.reshape(modules[n].weight.shape[0], -1).norm(dim=1).sum()
            for n in names
            if isinstance(modules[n], PRUNABLE_TYPES)
        ]
        return strength * torch.stack(terms).sum() if terms else torch.zeros(())

    return kind, group_lasso


def _regularized(ctx: _Context) -> nn.Module:
    o = ctx.options
    kind, penalty = _penalty(ctx)
    ctx.notes.append(
        f"penalty {kind}, λ={o['strength']:g}: "
        + (
            "L1 on the batch-norm scales (network slimming)"
            if kind == "bn-l1"
            else "group lasso, the sum of the L2 norms of the output channels of the plan's layers"
        )
    )
    model = ctx.subject.model
    ctx.record("start", model, target=0.0)
    model = ctx.train(
        model,
        o["epochs"],
        at=0,
        target=0.0,
        label=f"training with {kind}",
        lr=o["lr"],
        penalty=penalty,
        keep_from=o["epochs"],
    )
    if ctx.cancelled("before pruning"):
        return model
    ctx.progress(0, "pruning")
    model = _prune_step(model, ctx.plan, ctx.example, o["seed"], ctx.calibration)
    target = ctx.target(ctx.plan)
    ctx.record("prune", model, at=1, target=target)
    if o["finetune_epochs"] and not ctx.cancelled("before fine-tuning"):
        model = ctx.train(
            model, o["finetune_epochs"], at=1, target=target, label="fine-tuning", lr=o["lr"]
        )
    return model


_RUNNERS: dict[str, Callable[[_Context], nn.Module]] = {
    "one-shot": _one_shot,
    "iterative": _iterative,
    "gradual": _gradual,
    "snip": _snip,
    "lottery": _lottery,
    "regularized": _regularized,
}


def _training_epochs(spec: ScheduleSpec) -> int:
    o = spec.resolved()
    if spec.name == "iterative":
        return o["rounds"] * o["epochs"]
    if spec.name == "lottery":
        return (o["rounds"] + 1) * o["epochs"]
    if spec.name == "regularized":
        return o["epochs"] + o["finetune_epochs"]
    return int(o["epochs"])


def run_schedule(
    subject: Subject,
    plan: PruningPlan,
    schedule: ScheduleSpec | None = None,
    *,
    on_progress: Progress = no_progress,
    should_stop: Callable[[], bool] | None = None,
) -> ScheduleResult:
    """Run ``schedule`` (default: the plan's, else one-shot) for ``plan`` on ``subject``.

    The subject's base model is never modified. Deterministic for a given ``seed`` option.

    Returns:
        ScheduleResult: the final model (eval mode, gradients off) and every measured step.

    Raises:
        ScheduleError: the schedule cannot run on this model or plan (the message says why).
        DataError: a schedule that trains, on data without a labelled training split.
        ExplorerError: as pruning and fine-tuning raise.
    """
    spec = schedule or plan.schedule or ScheduleSpec("one-shot")
    plan.check_layers(subject.layer_names)
    _check(subject, plan, spec)
    ctx = _Context(subject, plan, spec, on_progress, should_stop or (lambda: False))
    ctx.total_units = max(1, _training_epochs(spec)) + 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.options["seed"])
        model = _RUNNERS[spec.name](ctx)
    model.requires_grad_(False)
    model.eval()
    # The model handed over (after training: the best validation checkpoint), measured once more.
    ctx.record("final", model, at=ctx.steps[-1].round, target=ctx.target(plan))
    on_progress(1.0, "done")
    return ScheduleResult(
        name=spec.name,
        settings=ctx.options,
        model=model,
        steps=ctx.steps,
        stopped="cancelled" if ctx.stop_reason else "completed",
        stop_reason=ctx.stop_reason,
        seconds=ctx.seconds(),
        target=ctx.target(plan),
        notes=ctx.notes,
        recovery=ctx.last_recovery,
    )
