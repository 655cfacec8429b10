"""The whole loop on one plan: prune, recalibrate batch norm, fine-tune, quantize to int8.

Every stage is exported to ONNX and measured there (accuracy, size, latency), side by side with
the dense model, so a user sees what each step gives back. The Recover page is a view on this.
With a ``schedule`` other than one-shot (``explorer.schedules``), the schedule's model replaces
recalibration and fine-tuning as one stage, and its every step is kept in ``LoopResult.schedule``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from explorer.errors import DataError
from explorer.plan import PruningPlan
from explorer.progress import Progress, no_progress
from explorer.recover import FinetuneResult, batchnorm_layers, finetune, recalibrate_bn
from explorer.schedules import ScheduleSpec, run_schedule
from explorer.subject import Subject

__all__ = ["INT8_MODES", "LoopResult", "Stage", "recover_pruned", "recovery_record", "run_loop"]

INT8_MODES = ("auto", "dynamic", "static")


@dataclass(frozen=True)
class Stage:
    """One measured step of the loop. ``metrics`` has the keys of ``Subject.evaluate``."""

    name: str
    metrics: dict[str, Any]
    note: str = ""


@dataclass
class LoopResult:
    stages: list[Stage] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # fine-tuning history
    stopped: str = (
        ""  # how fine-tuning ended ("completed", "early-stop", "cancelled"), "" if not run
    )
    int8: dict[str, Any] | None = None  # compare_int8(...).to_dict(), with the CPU note
    model: nn.Module | None = None  # the last fp32 model (fine-tuned when fine-tuning ran)
    schedule: dict[str, Any] | None = None  # ScheduleResult.to_dict() when a schedule ran
    recovery: dict[str, Any] | None = (
        None  # how ``model`` was recovered (``recovery_record``); None: not
    )

    def table(self) -> list[dict[str, Any]]:
        """One row per stage: the numbers a user compares."""
        keys = (
            "accuracy",
            "loss",
            "params_nonzero",
            "onnx_bytes",
            "onnx_gzip_bytes",
            "latency_ms_median",
            "latency_ms_p90",
        )
        return [
            {"stage": s.name, **{k: s.metrics.get(k) for k in keys}, "note": s.note}
            for s in self.stages
        ]


def run_loop(
    subject: Subject,
    plan: PruningPlan,
    *,
    recalibrate: bool = True,
    epochs: int = 0,
    distill: bool = False,
    temperature: float = 2.0,
    alpha: float = 0.5,
    patience: int | None = None,
    int8: str | None = None,
    schedule: ScheduleSpec | None = None,
    on_progress: Progress = no_progress,
    should_stop: Callable[[], bool] | None = None,
) -> LoopResult:
    """Run the loop on ``plan``; each stage is measured on its own ONNX export.

    Args:
        recalibrate: re-estimate batch-norm statistics of the pruned model (a stage of its own).
        epochs: fine-tuning epochs on the training split (0: no fine-tuning); zeros stay zero.
        distill: fine-tune with the dense model as teacher (``temperature``, weight ``alpha``).
        patience: stop fine-tuning after this many epochs without a better validation score
            (None: run every epoch); the best validation checkpoint is kept either way.
        int8: ``None`` or one of ``INT8_MODES``: quantize the last fp32 stage with ONNX Runtime.
        should_stop: polled during fine-tuning; True cancels it (the best model so far is kept).
        schedule: a schedule other than one-shot runs instead of recalibration and fine-tuning
            (``recalibrate``, ``epochs``, ``distill`` and ``patience`` are then not used): the
            stage named after it is its model, measured like the others.

    Raises:
        DataError: fine-tuning asked for on data without a training split.
        ExplorerError: as pruning, export and quantization raise.
    """
    if epochs and subject.data.train is None:
        raise DataError(
            f"{subject.data_spec}: fine-tuning needs a training split (an .npz with x_train,"
            " y_train)"
        )
    if int8 is not None and int8 not in INT8_MODES:
        raise DataError(f"int8 mode must be one of {list(INT8_MODES)}, got {int8!r}")
    result = LoopResult()
    dense, _ = subject.dense()
    result.stages.append(Stage("dense", dense.to_dict()))
    on_progress(0.02, "pruning")
    model = subject.prune(plan)
    result.stages.append(Stage("pruned", subject.measure(model).to_dict()))
    if schedule is not None and schedule.name != "one-shot":

        def scheduled(fraction: float, message: str) -> None:
            on_progress(0.1 + 0.7 * fraction, f"{schedule.name}: {message}")

        ran = run_schedule(subject, plan, schedule, on_progress=scheduled, should_stop=should_stop)
        model = ran.model
        result.schedule = ran.to_dict()
        result.recovery = ran.recovery
        result.stopped = ran.stopped
        note = schedule.describe() + (f"; {ran.stop_reason}" if ran.stop_reason else "")
        result.stages.append(Stage(schedule.name, subject.measure(model).to_dict(), note))
    else:

        def stage(name: str, stage_model: nn.Module, note: str) -> None:
            result.stages.append(Stage(name, subject.measure(stage_model).to_dict(), note))

        model, result.recovery, tuned = recover_pruned(
            subject,
            model,
            recalibrate=recalibrate,
            epochs=epochs,
            distill=distill,
            temperature=temperature,
            alpha=alpha,
            patience=patience,
            on_progress=on_progress,
            should_stop=should_stop,
            on_stage=stage,
        )
        if tuned is not None:
            result.epochs = tuned.history_rows()
            result.stopped = tuned.stopped
    result.model = model
    if int8 is not None:
        from explorer.quantize import compare_int8

        on_progress(0.85, "quantizing to int8")
        with tempfile.TemporaryDirectory(prefix="explorer-loop-") as tmp:
            fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            last = subject.measure(model, onnx_path=fp32_path)
            _, reference = subject.dense()
            cmp = compare_int8(
                fp32_path,
                subject.data,
                int8_path,
                mode=int8,
                reference=None if subject.data.has_labels else reference,
                threads=subject.threads,
                runs=subject.runs,
            )
        metrics = {
            **last.to_dict(),
            **cmp.int8.to_dict(),
        }  # params, MACs of the fp32 graph it came from
        result.int8 = cmp.to_dict()
        result.stages.append(Stage(f"int8 ({cmp.mode})", metrics, " ".join(cmp.notes)))
    on_progress(1.0, "done")
    return result


def recover_pruned(
    subject: Subject,
    model: nn.Module,
    *,
    recalibrate: bool = True,
    epochs: int = 0,
    distill: bool = False,
    temperature: float = 2.0,
    alpha: float = 0.5,
    patience: int | None = None,
    on_progress: Progress = no_progress,
    should_stop: Callable[[], bool] | None = None,
    on_stage: Callable[[str, nn.Module, str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any] | None, FinetuneResult | None]:
    """The recovery stages on a pruned ``model``, the same for the app's loop and the CLI's export.

    Batch-norm statistics re-estimated on the training split (the test split without one) when
    ``recalibrate`` and the model has batch norms; then ``epochs`` of fine-tuning (seed 0, zeros
    kept zero, the best validation epoch kept), distilled from the dense model if ``distill``.
    ``on_stage(name, model, note)`` is called after each stage that ran.

    Returns:
        The recovered model (``model`` itself when no stage ran), its ``recovery_record`` (None
        when no stage ran) and the fine-tuning result (None without fine-tuning).
    """
    recalibrated, calibration_split, tuned = False, "", None
    if recalibrate and batchnorm_layers(model):
        on_progress(0.1, "recalibrating batch norm")
        calibration_split = "training" if subject.data.train is not None else "test"
        model = recalibrate_bn(model, subject.data.train or subject.data.test)
        recalibrated = True
        if on_stage is not None:
            on_stage(
                "BN recalibrated",
                model,
                f"batch-norm statistics re-estimated on the {calibration_split} split",
            )
    if epochs:

        def progress(fraction: float, message: str) -> None:
            on_progress(0.15 + 0.65 * fraction, message)

        tuned = finetune(
            model,
            subject.data,
            epochs,
            distill_from=subject.model if distill else None,
            temperature=temperature,
            alpha=alpha,
            patience=patience,
            recalibrate=False,
            on_progress=progress,
            should_stop=should_stop or (lambda: False),
        )
        model = tuned.model
        if on_stage is not None:
            note = (
                f"{len(tuned.history) - 1} epoch(s), best at {tuned.best_epoch} ({tuned.stopped})"
            )
            if distill:
                note += f"; distilled from dense (T={temperature}, weight {alpha})"
            on_stage("fine-tuned", model, note)
    if not recalibrated and tuned is None:
        return model, None, None
    return (
        model,
        recovery_record(recalibrated, calibration_split, tuned.to_dict() if tuned else None),
        tuned,
    )


def recovery_record(
    recalibrated: bool, calibration_split: str = "", finetuned: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``recovery`` entry of metrics.json: what was done to the pruned weights before export.

    ``finetuned`` is ``FinetuneResult.to_dict()`` (its keys are kept at the top level, as the CLI's
    fine-tuned exports always had them); without it, only the batch-norm recalibration is recorded.
    """
    out: dict[str, Any] = dict(finetuned or {})
    out["recalibrated"] = bool(recalibrated or out.get("recalibrated"))
    if calibration_split:
        out["calibration_split"] = calibration_split
    return out
