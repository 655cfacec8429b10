"""Recovery after pruning: batch-norm recalibration and fine-tuning (optionally distilled).

Both work on a copy: the pruned model you pass in is never modified, so a cached pruned model (or
the shared base model) stays valid. Fine-tuning keeps what pruning did:

- the structure: no layer changes shape (parameters are only updated in place);
- the masks: every weight of a prunable layer (conv, linear) that is exactly zero before
  fine-tuning is zero again after every optimizer step, so unstructured and 2:4 sparsity survive.

Knowledge distillation uses the dense model as teacher (Hinton et al.: KL divergence between
temperature-softened outputs, scaled by T^2, mixed with cross-entropy by ``alpha``). Without labels
on the training split, distillation alone is the loss.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from explorer.capabilities import Capabilities
from explorer.data import Dataset, Split
from explorer.errors import DataError, RecoverError
from explorer.evaluate import check_labels, scores
from explorer.inputs import describe, run_model
from explorer.inspect import PRUNABLE_TYPES
from explorer.models.outputs import logits_of
from explorer.progress import Progress, no_progress

__all__ = [
    "EpochRecord",
    "FinetuneResult",
    "ZeroKeeper",
    "batchnorm_layers",
    "finetune",
    "not_recoverable",
    "recalibrate_bn",
    "zero_masks",
]

_PROGRESS_EVERY_S = 0.2  # throttle per-batch progress reports (the app redraws on each)
StopReason = Literal["completed", "early-stop", "cancelled"]


def _never() -> bool:
    return False


def _tracks_running_stats(module: nn.Module) -> bool:
    """A normalisation layer with running statistics to re-estimate, recognised by what it holds
    (``running_mean`` and ``running_var`` buffers and ``track_running_stats``), not by its class:
    the importers build their own batch-norm classes (e.g. ONNX's any-rank BatchNormalization)."""
    return (
        bool(getattr(module, "track_running_stats", False))
        and isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
    )


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the batch-norm layers of ``model`` that track running statistics (any class)."""
    return [n for n, m in model.named_modules() if _tracks_running_stats(m)]


def _reset_running_stats(module: nn.Module) -> None:
    if hasattr(module, "reset_running_stats"):
        module.reset_running_stats()
        return
    module.running_mean.zero_()
    module.running_var.fill_(1)
    if isinstance(getattr(module, "num_batches_tracked", None), torch.Tensor):
        module.num_batches_tracked.zero_()


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep-masks (``weight != 0``) of the prunable layers whose weight has at least one zero.

    Keys are parameter names (``"features.0.weight"``). Layers without zeros are left out: they
    have nothing to keep.
    """
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            keep = module.weight.detach() != 0
            if not bool(keep.all()):
                masks[f"{name}.weight" if name else "weight"] = keep
    return masks


class ZeroKeeper:
    """Keeps the zeros of a model's prunable weights zero while it trains.

    ``apply()`` after every optimizer step multiplies each masked weight by its keep-mask
    (``zero_masks``), so unstructured and N:M sparsity survive training. A schedule that sets new
    zeros during training (gradual pruning) calls ``refresh()`` afterwards to re-read the masks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = dict(model.named_parameters())
        self.masks = zero_masks(model)

    def refresh(self) -> None:
        self.masks = zero_masks(self.model)

    @torch.no_grad()
    def apply(self) -> None:
        for name, keep in self.masks.items():
            self.params[name].mul_(keep)


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                logits_of(run_model(model, x[i : i + batch_size]))
                for i in range(0, len(x), batch_size)
            ]
        )


def _check_input(split: Split, where: str) -> None:
    if len(split) == 0:
        raise DataError(f"{where} is empty")


def not_recoverable(model: nn.Module) -> str:
    """Why ``model`` cannot be recalibrated or fine-tuned here ("" when it can).

    An ONNX graph with nodes run in ONNX Runtime has no gradient through them, and only zeroed
    weights can be written back into it (``OnnxModule.write_onnx``).
    """
    return Capabilities.of(model).training_off


def recalibrate_bn(
    model: nn.Module, split: Split, *, batch_size: int = 64, max_batches: int | None = None
) -> nn.Module:
    """Re-estimate the batch-norm running statistics of a (pruned) model on calibration data.

    Pruning changes what flows into every batch-norm layer, so the running mean and variance stored
    during training no longer match. This resets them and re-computes them as an exact cumulative
    average (``momentum=None``) over ``split.x`` in batches, with only the batch-norm layers in
    training mode and no gradients. Weights, biases and the affine BN parameters do not change.

    Returns:
        A recalibrated copy in eval mode; ``model`` is not modified. A model without batch-norm
        layers comes back as an unchanged copy (see ``batchnorm_layers``).

    Raises:
        DataError: the split is empty, or the model does not accept it.
        RecoverError: ``batch_size`` or ``max_batches`` is not a positive integer, or the model
            cannot be recalibrated here (``not_recoverable``).
    """
    if batch_size < 1:
        raise RecoverError(f"batch_size must be at least 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise RecoverError(f"max_batches must be at least 1 or None, got {max_batches}")
    if batchnorm_layers(model) and not_recoverable(model):
        raise RecoverError(not_recoverable(model))
    _check_input(split, "the calibration data")
    out = copy.deepcopy(model).eval()
    bns = [m for m in out.modules() if _tracks_running_stats(m)]
    if not bns:
        return out
    momenta = [getattr(bn, "momentum", None) for bn in bns]
    for bn in bns:
        _reset_running_stats(bn)
        bn.momentum = None  # cumulative moving average: every batch counts the same
        bn.train()
    n_batches = math.ceil(len(split) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    try:
        with torch.no_grad():
            for i in range(n_batches):
                batch = split.x[i * batch_size : (i + 1) * batch_size]
                if len(batch) < 2 and i > 0:
                    break  # BN in training mode cannot normalise a batch of one
                run_model(out, batch)
    except Exception as e:
        raise DataError(
            f"the model does not accept the calibration data ({describe(split.x)}): "
            f"{type(e).__name__}: {e}"
        ) from None
    finally:
        for bn, momentum in zip(bns, momenta, strict=False):
            bn.momentum = momentum
        out.eval()
    return out


@dataclass(frozen=True)
class EpochRecord:
    """One row of the fine-tuning history. Epoch 0 is the model before fine-tuning."""

    epoch: int
    train_loss: float | None  # mean loss over the epoch's batches (None for epoch 0)
    val_accuracy: float | None  # None without a validation split
    val_loss: float | None
    seconds: float  # wall-clock time since the start of fine-tuning


@dataclass
class FinetuneResult:
    """The fine-tuned model (the best validation checkpoint) and how it got there."""

    model: nn.Module
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0  # 0: no epoch beat the starting model on validation
    stopped: StopReason = "completed"
    seconds: float = 0.0
    masked_layers: tuple[str, ...] = ()  # parameters whose zeros were kept zero
    distilled: bool = False
    recalibrated: bool = False  # batch-norm statistics were re-estimated before epoch 0
    settings: dict[str, Any] = field(default_factory=dict)  # the arguments of ``finetune``

    def history_rows(self) -> list[dict[str, float | int | None]]:
        """The history as plain dicts (for a DataFrame, JSON or a chart)."""
        return [vars(r).copy() for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (the ``recovery`` entry of metrics.json)."""
        return {
            "settings": dict(self.settings),
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "distilled": self.distilled,
            "recalibrated": self.recalibrated,
            "masked_layers": list(self.masked_layers),
            "history": self.history_rows(),
        }


_MIN_LOSS_DELTA = (
    1e-4  # a validation loss must drop by this much to count as better at equal accuracy
)


def _better(new: tuple[float, float], best: tuple[float, float]) -> bool:
    """Higher validation accuracy wins; at equal accuracy, a clearly lower loss."""
    return new[0] > best[0] or (new[0] == best[0] and new[1] < best[1] - _MIN_LOSS_DELTA)


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = nn.functional.log_softmax(student / temperature, dim=1)
    q = nn.functional.log_softmax(teacher / temperature, dim=1)
    return nn.functional.kl_div(log_p, q, log_target=True, reduction="batchmean") * temperature**2


def finetune(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    *,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    distill_from: nn.Module | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    patience: int | None = None,
    recalibrate: bool = True,
    seed: int = 0,
    on_progress: Progress = no_progress,
    should_stop: Callable[[], bool] = _never,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    on_step: Callable[[int, nn.Module], bool] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    keep_from: int = 0,
) -> FinetuneResult:
    """Fine-tune a pruned model on ``data.train``, keeping its structure and its zeros.

    Adam with a cosine learning-rate schedule from ``lr`` to 0 over ``epochs``. After every epoch
    the model is scored on ``data.val``; the best checkpoint (accuracy, then loss) is returned, and
    training stops early after ``patience`` epochs without improvement. Epoch 0 (the starting
    point: the model as given, batch-norm recalibrated if ``recalibrate``) is a candidate too, so
    fine-tuning never returns a model worse on validation than where it started. Without a
    validation split, the last completed epoch is returned and nothing stops early.

    Args:
        model: the pruned model; not modified (a copy is trained).
        data: needs a ``train`` split; labels are needed unless ``distill_from`` is given.
        epochs: number of passes over the training split (>= 1).
        distill_from: the teacher (normally the dense model), used in eval mode under no_grad and
            not modified. The loss is ``alpha * KD + (1 - alpha) * CE`` (only KD without labels).
        temperature: softening of teacher and student outputs for the KD term. The defaults
            (lr 3e-3, T=2, alpha=0.5) are the recipe of ``benchmarks/recover.py``: on the zoo's
            90%-sparse MLP, T=2 recovered 1-2 test samples more than T=4.
        alpha: weight of the KD term in [0, 1].
        patience: epochs without validation improvement before stopping; None: never.
        recalibrate: first re-estimate batch-norm statistics on the training split
            (``recalibrate_bn``), so that epoch 0 and the first steps start from sensible ones.
        seed: seeds the batch order and, inside ``torch.random.fork_rng``, torch's RNG for layers
            like dropout (the global RNG state is restored afterwards).
        on_progress: called with (fraction done, message), throttled within an epoch.
        should_stop: polled before every batch; when it returns True, training stops and the best
            checkpoint so far is returned with ``stopped="cancelled"``.
        penalty: a regulariser added to every batch's loss, ``penalty(model)`` (e.g. L1 on the
            batch-norm scales); the schedules of ``explorer.schedules`` use it.
        on_step: called after every optimizer step (zeros already re-applied) with the step number
            (1-based, over all epochs) and the model in training; it returns True when it set new
            zeros, which are then kept too (gradual pruning).
        on_epoch: called after every completed epoch (after validation) with the epoch and the
            model as it is at that point (not the best checkpoint).
        keep_from: the first epoch that may be returned as the best checkpoint (epochs before it,
            e.g. while a schedule is still pruning, are not candidates). With ``keep_from`` > 0 and
            no candidate reached (cancelled early), the model as it was when training stopped is
            returned.

    Returns:
        FinetuneResult with the model in eval mode, gradients off.

    Raises:
        DataError: no training split, no labels and no teacher, or data the model does not accept.
        RecoverError: a hyper-parameter out of range, or a model that cannot be trained here
            (``not_recoverable``).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise RecoverError(f"epochs must be a positive integer, got {epochs!r}")
    if not_recoverable(model):
        raise RecoverError(not_recoverable(model))
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise RecoverError(f"learning rate must be a positive number, got {lr!r}")
    if batch_size < 1:
        raise RecoverError(f"batch_size must be at least 1, got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise RecoverError(f"distillation weight alpha must be in [0, 1], got {alpha!r}")
    if not temperature > 0:
        raise RecoverError(f"distillation temperature must be positive, got {temperature!r}")
    if patience is not None and patience < 1:
        raise RecoverError(f"patience must be at least 1 epoch or None, got {patience!r}")
    if not 0 <= keep_from <= epochs:
        raise RecoverError(f"keep_from must be an epoch in [0, {epochs}], got {keep_from!r}")
    train = data.train
    if train is None:
        raise DataError(
            f"{data.spec}: no training split; fine-tuning needs one (an .npz with x_train and "
            "y_train, or a zoo data set)"
        )
    _check_input(train, f"{data.spec}: the training split")
    if train.y is None and distill_from is None:
        raise DataError(
            f"{data.spec}: the training split has no labels; fine-tune with distillation from "
            "the dense model instead"
        )

    with torch.random.fork_rng(devices=[]):
        start = time.perf_counter()
        torch.manual_seed(seed)  # inside fork_rng: the caller's global RNG state is restored after
        g = torch.Generator().manual_seed(seed)
        recalibrated = recalibrate and bool(batchnorm_layers(model))
        if recalibrated:
            on_progress(0.0, "re-estimating batch-norm statistics")
            student = recalibrate_bn(model, Split(train.x, None))
        else:
            student = copy.deepcopy(model).eval()
        student.requires_grad_(True)
        keeper = ZeroKeeper(student)
        n_classes = _safe_logits(student, train.x[:1], data.spec).shape[1]
        check_labels(train, n_classes, f"{data.spec} (training split)")

        # The teacher's outputs are fixed (no augmentation): compute them once.
        teacher_train = teacher_val = None
        if distill_from is not None:
            teacher = (
                distill_from if not distill_from.training else copy.deepcopy(distill_from).eval()
            )
            teacher_train = _safe_logits(teacher, train.x, data.spec)
            if data.val is not None:
                teacher_val = _safe_logits(teacher, data.val.x, data.spec)

        def validate() -> tuple[float | None, float | None]:
            val = data.val
            if val is None or (val.y is None and teacher_val is None):
                return None, None
            student.eval()
            logits = _safe_logits(student, val.x, data.spec).numpy()
            ref = teacher_val.numpy() if teacher_val is not None else None
            acc, loss = scores(logits, val.y.numpy() if val.y is not None else None, ref)
            return acc, loss

        def snapshot() -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in student.state_dict().items()}

        val_acc, val_loss = validate()
        history = [EpochRecord(0, None, val_acc, val_loss, time.perf_counter() - start)]
        best = (
            (val_acc, val_loss)
            if val_acc is not None and val_loss is not None and keep_from == 0
            else None
        )
        best_state: dict[str, torch.Tensor] | None = snapshot() if keep_from == 0 else None
        best_epoch = 0
        stopped: StopReason = "completed"
        since_best = 0

        opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
        n_batches = math.ceil(len(train) / batch_size)
        total_steps = epochs * n_batches
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
        use_kd = teacher_train is not None and (alpha > 0 or train.y is None)
        kd_weight = 1.0 if train.y is None else alpha
        last_report = 0.0
        step = 0
        on_progress(0.0, f"fine-tuning: epoch 1/{epochs}")
        for epoch in range(1, epochs + 1):
            student.train()
            perm = torch.randperm(len(train), generator=g)
            losses: list[float] = []
            for b in range(n_batches):
                if should_stop():
                    stopped = "cancelled"
                    break
                idx = perm[b * batch_size : (b + 1) * batch_size]
                if len(idx) < 2 and b > 0:
                    continue  # batch norm cannot train on a batch of one
                try:
                    out = logits_of(run_model(student, train.x[idx]))
                except Exception as e:
                    raise DataError(
                        f"{data.spec}: the model does not accept the training data: "
                        f"{type(e).__name__}: {e}"
                    ) from None
                loss = torch.zeros((), dtype=out.dtype)
                if train.y is not None and kd_weight < 1.0:
                    loss = loss + (1 - kd_weight) * nn.functional.cross_entropy(out, train.y[idx])
                if use_kd:
                    assert teacher_train is not None
                    loss = loss + kd_weight * _kd_loss(out, teacher_train[idx], temperature)
                if penalty is not None:
                    loss = loss + penalty(student)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                keeper.apply()
                step += 1
                if on_step is not None and on_step(step, student):
                    keeper.refresh()
                losses.append(float(loss.detach()))
                now = time.perf_counter()
                if now - last_report >= _PROGRESS_EVERY_S:
                    last_report = now
                    on_progress(
                        ((epoch - 1) + (b + 1) / n_batches) / epochs,
                        f"fine-tuning: epoch {epoch}/{epochs}, batch {b + 1}/{n_batches}, "
                        f"loss {np.mean(losses):.4f}",
                    )
            if stopped == "cancelled":
                break
            val_acc, val_loss = validate()
            history.append(
                EpochRecord(
                    epoch,
                    float(np.mean(losses)) if losses else None,
                    val_acc,
                    val_loss,
                    time.perf_counter() - start,
                )
            )
            if on_epoch is not None:
                on_epoch(epoch, student)
            if epoch < keep_from:
                pass  # not a candidate yet (a schedule still changing the model)
            elif val_acc is None or val_loss is None:
                best_state, best_epoch = (
                    snapshot(),
                    epoch,
                )  # no validation: the last epoch is the result
            elif best is None or _better((val_acc, val_loss), best):
                best, best_state, best_epoch, since_best = (val_acc, val_loss), snapshot(), epoch, 0
            else:
                since_best += 1
            shown = f", val accuracy {val_acc:.4f}" if val_acc is not None else ""
            on_progress(epoch / epochs, f"fine-tuning: epoch {epoch}/{epochs} done{shown}")
            if patience is not None and since_best >= patience and epoch < epochs:
                stopped = "early-stop"
                break

        if best_state is not None:
            student.load_state_dict(best_state)
        else:  # cancelled before ``keep_from``: the model as it stopped
            best_epoch = history[-1].epoch
        student.requires_grad_(False)
        student.eval()
        return FinetuneResult(
            model=student,
            history=history,
            best_epoch=best_epoch,
            stopped=stopped,
            seconds=time.perf_counter() - start,
            masked_layers=tuple(keeper.masks),
            distilled=use_kd,
            recalibrated=recalibrated,
            settings={
                "epochs": epochs,
                "lr": lr,
                "batch_size": batch_size,
                "weight_decay": weight_decay,
                "distill": distill_from is not None,
                "temperature": temperature,
                "alpha": alpha,
                "patience": patience,
                "recalibrate": recalibrate,
                "seed": seed,
                **({"keep_from": keep_from} if keep_from else {}),
                **({"penalty": True} if penalty is not None else {}),
            },
        )


def _safe_logits(model: nn.Module, x: torch.Tensor, spec: str) -> torch.Tensor:
    try:
        return _logits(model, x)
    except Exception as e:
        raise DataError(
            f"{spec}: the model does not accept input of shape {tuple(x.shape)}: "
            f"{type(e).__name__}: {e}"
        ) from None
