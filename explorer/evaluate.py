"""Accuracy, loss, size, MACs and latency: measured on the exported ONNX model in ONNX Runtime.

Without labels, ``accuracy`` is top-1 agreement with the dense model and ``loss`` is the KL
divergence from the dense model's predictions (``labels`` is False in the metrics).

:class:`Evaluation` is what ``Subject.evaluate`` returns and every reader (the CLI's JSON, the
report, the app's cards) renders: the pruned and the dense metrics, their latencies measured in one
interleaved window, and the speedup of that window (``explorer.runtime.measure_speedup``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from explorer.data import Dataset, Split
from explorer.errors import DataError, ExportError
from explorer.inputs import Inputs, run_model
from explorer.inspect import count_macs
from explorer.models.outputs import logits_of
from explorer.runtime import (
    LatencyStats,
    OrtModel,
    Speedup,
    export_onnx,
    gzip_size,
    measure_latency,
)
from explorer.tolerance import relative_error

if TYPE_CHECKING:
    from explorer.plan import PruningPlan

Timer = Callable[[OrtModel, np.ndarray], LatencyStats]  # times a session on the example input

__all__ = [
    "Evaluation",
    "Metrics",
    "OnnxMetrics",
    "check_labels",
    "evaluate_torch",
    "measure",
    "measure_onnx",
    "sample_scores",
    "samples_per_call",
    "scores",
    "with_latency",
]


BATCH_BYTES = 32 * 2**20  # inputs per ONNX Runtime or PyTorch call (at 224 px about 50 images)


def samples_per_call(
    x: np.ndarray | torch.Tensor | Inputs | dict[str, np.ndarray], most: int = 512
) -> int:
    """Samples to run at once: at most ``most``, and at most :data:`BATCH_BYTES` of inputs (all
    named inputs together), so that a 224-px ResNet-50's activations stay well under a GB (a batch
    of 256 takes about 3 GB)."""
    parts = x.values() if isinstance(x, (Inputs, dict)) else [x]
    per = sum(
        int(a[0].nbytes) if isinstance(a, np.ndarray) else int(a[0].numel() * a.element_size())
        for a in parts
    )
    return max(1, min(most, BATCH_BYTES // max(per, 1)))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def check_labels(split: Split, n_classes: int, where: str) -> None:
    if split.y is not None and len(split.y) and int(split.y.max()) >= n_classes:
        raise DataError(
            f"{where}: label {int(split.y.max())} is out of range for a model with {n_classes}"
            " outputs"
        )


def sample_scores(
    logits: np.ndarray, y: np.ndarray | None, reference: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: whether ``logits`` are right (against labels ``y``, else agree with ``reference``
    logits) and the loss term (cross-entropy, else KL divergence from ``reference``). Rows are
    independent: scoring in chunks and concatenating gives the same terms as scoring at once."""
    logp = _log_softmax(logits)
    if y is not None:
        return logits.argmax(1) == y, -logp[np.arange(len(y)), y]
    if reference is None:
        raise ValueError("unlabelled data needs the dense model's logits as reference")
    ref_logp = _log_softmax(reference)
    return logits.argmax(1) == reference.argmax(1), (np.exp(ref_logp) * (ref_logp - logp)).sum(1)


def scores(
    logits: np.ndarray, y: np.ndarray | None, reference: np.ndarray | None
) -> tuple[float, float]:
    """(accuracy, loss) of ``logits``: against labels ``y``, else against ``reference`` logits."""
    correct, loss = sample_scores(logits, y, reference)
    if y is not None:
        return float(correct.mean()), float(loss.mean())
    return float(correct.mean()), max(float(loss.mean()), 0.0)


@torch.no_grad()
def evaluate_torch(
    model: nn.Module,
    split: Split,
    reference: np.ndarray | None = None,
    batch_size: int | None = None,
) -> tuple[float, float]:
    """(accuracy, loss) of a torch model on ``split``; for scans, where no artifact is exported."""
    batch_size = batch_size or samples_per_call(split.x)
    logits = np.concatenate(
        [
            run_model(model, split.x[i : i + batch_size]).numpy()
            for i in range(0, len(split), batch_size)
        ]
    )
    y = split.y.numpy() if split.y is not None else None
    return scores(logits, y, reference)


@dataclass(frozen=True)
class OnnxMetrics:
    """Accuracy, size and latency of one ONNX file (the same keys as
    ``explorer.evaluate.Metrics``)."""

    accuracy: float
    loss: float
    onnx_bytes: int
    onnx_gzip_bytes: int
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_spread: float
    latency_threads: int
    latency_runs: int
    labels: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


M = TypeVar("M", bound=OnnxMetrics)


def with_latency(metrics: M, stats: LatencyStats) -> M:
    """``metrics`` with its latency fields replaced by ``stats`` (e.g. those of an interleaved
    window)."""
    return replace(
        metrics,
        latency_ms_median=stats.median_ms,
        latency_ms_p90=stats.p90_ms,
        latency_ms_spread=stats.spread_ms,
        latency_threads=stats.threads,
        latency_runs=stats.runs,
    )


@dataclass(frozen=True)
class Metrics(OnnxMetrics):
    """``OnnxMetrics`` of the exported model plus what the torch model tells: parameters and MACs.

    With ``labels`` False, accuracy is agreement with the dense model and loss the KL divergence
    from it.
    """

    params_total: int
    params_nonzero: int
    macs: int


def measure_onnx(
    path: str | Path,
    data: Dataset,
    *,
    reference: np.ndarray | None = None,
    threads: int = 1,
    runs: int = 50,
    timer: Timer | None = None,
) -> tuple[OnnxMetrics, np.ndarray]:
    """Score an ONNX file on ``data.test`` and time it (batch 1, ``threads`` intra-op threads).

    Returns the metrics and the logits. Accuracy uses every core (its own session); latency keeps
    the fixed thread count. ``reference``: the dense model's logits, for data without labels; None
    there means this file is the dense model, its own reference (agreement 1). ``timer`` times the
    file's session instead of :func:`measure_latency` (e.g. alternately with the dense model).

    Raises:
        ExportError: ONNX Runtime cannot load or run the file.
        DataError: labels out of range for the model's outputs.
    """
    try:
        x = data.test.x.numpy()
        logits = OrtModel(path, threads=os.cpu_count() or 1)(x, batch_size=samples_per_call(x, 256))
        session = OrtModel(path, threads=threads)
        x = data.example_input().numpy()
        latency = timer(session, x) if timer is not None else measure_latency(session, x, runs=runs)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(
            f"{path}: ONNX Runtime cannot run it: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    check_labels(data.test, logits.shape[1], data.spec)
    y = data.test.y.numpy() if data.test.y is not None else None
    accuracy, loss = scores(logits, y, logits if y is None and reference is None else reference)
    metrics = OnnxMetrics(
        accuracy=accuracy,
        loss=loss,
        onnx_bytes=Path(path).stat().st_size,
        onnx_gzip_bytes=gzip_size(path),
        latency_ms_median=latency.median_ms,
        latency_ms_p90=latency.p90_ms,
        latency_ms_spread=latency.spread_ms,
        latency_threads=latency.threads,
        latency_runs=latency.runs,
        labels=y is not None,
    )
    return metrics, logits


EXPORT_TOL = 1e-3  # relative to the output scale: float noise is ~1e-6 (explorer.tolerance)
EXPORT_CHECK = 8  # evaluation samples the export is checked on


def check_export(model: nn.Module, data: Dataset, logits: np.ndarray) -> None:
    """Raise ExportError when the exported file's ``logits`` on the first evaluation samples are not
    what ``model`` computes on them: the numbers would be another model's. (An exporter traces one
    example input; a graph whose computation depends on that input's values, e.g. an attention
    mask folded into a constant, agrees on the example and nowhere else.)"""
    n = min(EXPORT_CHECK, len(data.test))
    with torch.no_grad():
        want = logits_of(run_model(model, data.test.x[:n]))
    err = relative_error(logits[:n], want)
    if err > EXPORT_TOL:
        raise ExportError(
            f"{data.spec}: the ONNX file exported from this model does not compute what the model"
            f" computes on the evaluation data (relative error {err:.2g} on {n} samples): the"
            " export depends on its example input (e.g. an attention mask folded into a constant),"
            " so its numbers would be another model's. Load the model from its Python entrypoint"
            " (PATH.py:FUNC) or a .pt2 file instead."
        )


def measure(
    model: nn.Module,
    data: Dataset,
    *,
    reference: np.ndarray | None = None,
    onnx_path: str | Path | None = None,
    threads: int = 1,
    runs: int = 50,
    timer: Timer | None = None,
) -> tuple[Metrics, np.ndarray]:
    """Export ``model`` to ONNX and measure it there (``measure_onnx``), plus its parameters and
    MACs. Returns the metrics and the ORT logits.

    Args:
        reference: the dense model's logits on ``data.test``, for data without labels. None with
            unlabelled data: ``model`` is the dense model, its own reference (agreement 1).
        onnx_path: where to keep the ONNX file; a temporary file when None.
        threads: ONNX Runtime intra-op threads for the latency runs.
        timer: how the exported file's session is timed (``measure_onnx``).
    """
    with tempfile.TemporaryDirectory(prefix="explorer-") as tmp:
        path = Path(onnx_path) if onnx_path is not None else Path(tmp) / "model.onnx"
        export_onnx(model, data.example_input(), path)
        onnx, logits = measure_onnx(
            path, data, reference=reference, threads=threads, runs=runs, timer=timer
        )
    check_export(model, data, logits)
    params = list(model.parameters())
    metrics = Metrics(
        **onnx.to_dict(),
        params_total=sum(p.numel() for p in params),
        params_nonzero=sum(int(torch.count_nonzero(p)) for p in params),
        macs=sum(count_macs(model, data.example_input()).values()),
    )
    return metrics, logits


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a plan on a subject: what the CLI's JSON, the report and the pages read.

    ``pruned`` and ``dense`` are the two models' metrics; when ``speedup`` is set their latency
    fields are those of its interleaved window (so every latency shown next to another was timed
    alongside it). ``plan`` is None for the dense model alone (``evaluate`` without a plan).
    """

    pruned: Metrics
    dense: Metrics
    model: str
    data: str | None
    plan: PruningPlan | None = None
    speedup: Speedup | None = None
    inputs: str | None = (
        None  # what the model was fed: names, dtypes, per-sample shapes (``Dataset.inputs``)
    )
    output: str | None = (
        None  # how its output was read, when it is not a plain tensor (a ModelOutput)
    )

    @property
    def labels(self) -> bool:
        return self.pruned.labels

    @property
    def mac_ratio(self) -> float:
        """Dense over pruned multiply-accumulates (inf when the pruned model has none)."""
        return self.dense.macs / self.pruned.macs if self.pruned.macs else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """The ``evaluate --json`` object: the pruned metrics, the dense ones under ``dense``, the
        model and data specs, the plan (when there is one) and the interleaved ``speedup``."""
        out: dict[str, Any] = dict(self.pruned.to_dict())
        out["dense"] = self.dense.to_dict()
        out["model"] = self.model
        out["data"] = self.data
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        out["speedup"] = self.speedup.to_dict() if self.speedup is not None else None
        if self.inputs is not None:
            out["inputs"] = self.inputs
        if self.output:
            out["output"] = self.output
        return out
