"""Accuracy, loss, size, MACs and latency: measured on the exported ONNX model in ONNX Runtime.

Without labels, ``accuracy`` is top-1 agreement with the dense model and ``loss`` is the KL
divergence from the dense model's predictions (``labels`` is False in the metrics).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from explorer.data import Dataset, Split
from explorer.errors import DataError, ExportError
from explorer.inputs import run_model
from explorer.inspect import count_macs
from explorer.runtime import OrtModel, export_onnx, gzip_size, measure_latency

__all__ = ["Metrics", "OnnxMetrics", "check_labels", "evaluate_torch", "measure", "measure_onnx", "scores"]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def check_labels(split: Split, n_classes: int, where: str) -> None:
    if split.y is not None and len(split.y) and int(split.y.max()) >= n_classes:
        raise DataError(f"{where}: label {int(split.y.max())} is out of range for a model with {n_classes} outputs")


def scores(logits: np.ndarray, y: np.ndarray | None, reference: np.ndarray | None) -> tuple[float, float]:
    """(accuracy, loss) of ``logits``: against labels ``y``, else against ``reference`` logits."""
    logp = _log_softmax(logits)
    if y is not None:
        accuracy = float((logits.argmax(1) == y).mean())
        loss = float(-logp[np.arange(len(y)), y].mean())
        return accuracy, loss
    if reference is None:
        raise ValueError("unlabelled data needs the dense model's logits as reference")
    ref_logp = _log_softmax(reference)
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    kl = float((np.exp(ref_logp) * (ref_logp - logp)).sum(1).mean())
    return agreement, max(kl, 0.0)


@torch.no_grad()
def evaluate_torch(model: nn.Module, split: Split, reference: np.ndarray | None = None,
                   batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, loss) of a torch model on ``split``; for scans, where no artifact is exported."""
    logits = np.concatenate([run_model(model, split.x[i : i + batch_size]).numpy()
                             for i in range(0, len(split), batch_size)])
    y = split.y.numpy() if split.y is not None else None
    return scores(logits, y, reference)


@dataclass(frozen=True)
class OnnxMetrics:
    """Accuracy, size and latency of one ONNX file (the same keys as ``explorer.evaluate.Metrics``)."""

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


@dataclass(frozen=True)
class Metrics(OnnxMetrics):
    """``OnnxMetrics`` of the exported model plus what the torch model tells: parameters and MACs.

    With ``labels`` False, accuracy is agreement with the dense model and loss the KL divergence
    from it.
    """

    params_total: int
    params_nonzero: int
    macs: int


def measure_onnx(path: str | Path, data: Dataset, *, reference: np.ndarray | None = None, threads: int = 1,
                 runs: int = 50) -> tuple[OnnxMetrics, np.ndarray]:
    """Score an ONNX file on ``data.test`` and time it (batch 1, ``threads`` intra-op threads).

    Returns the metrics and the logits. Accuracy uses every core (its own session); latency keeps
    the fixed thread count. ``reference``: the dense model's logits, for data without labels; None
    there means this file is the dense model, its own reference (agreement 1).

    Raises:
        ExportError: ONNX Runtime cannot load or run the file.
        DataError: labels out of range for the model's outputs.
    """
    try:
        logits = OrtModel(path, threads=os.cpu_count() or 1)(data.test.x.numpy())
        session = OrtModel(path, threads=threads)
        latency = measure_latency(session, data.example_input().numpy(), runs=runs)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{path}: ONNX Runtime cannot run it: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    check_labels(data.test, logits.shape[1], data.spec)
    y = data.test.y.numpy() if data.test.y is not None else None
    accuracy, loss = scores(logits, y, logits if y is None and reference is None else reference)
    metrics = OnnxMetrics(
        accuracy=accuracy, loss=loss, onnx_bytes=Path(path).stat().st_size, onnx_gzip_bytes=gzip_size(path),
        latency_ms_median=latency.median_ms, latency_ms_p90=latency.p90_ms,
        latency_ms_spread=latency.spread_ms, latency_threads=latency.threads, latency_runs=latency.runs,
        labels=y is not None,
    )
    return metrics, logits


def measure(model: nn.Module, data: Dataset, *, reference: np.ndarray | None = None,
            onnx_path: str | Path | None = None, threads: int = 1, runs: int = 50) -> tuple[Metrics, np.ndarray]:
    """Export ``model`` to ONNX and measure it there (``measure_onnx``), plus its parameters and
    MACs. Returns the metrics and the ORT logits.

    Args:
        reference: the dense model's logits on ``data.test``, for data without labels. None with
            unlabelled data: ``model`` is the dense model, its own reference (agreement 1).
        onnx_path: where to keep the ONNX file; a temporary file when None.
        threads: ONNX Runtime intra-op threads for the latency runs.
    """
    with tempfile.TemporaryDirectory(prefix="explorer-") as tmp:
        path = Path(onnx_path) if onnx_path is not None else Path(tmp) / "model.onnx"
        export_onnx(model, data.example_input(), path)
        onnx, logits = measure_onnx(path, data, reference=reference, threads=threads, runs=runs)
    params = list(model.parameters())
    metrics = Metrics(
        **onnx.to_dict(),
        params_total=sum(p.numel() for p in params),
        params_nonzero=sum(int(torch.count_nonzero(p)) for p in params),
        macs=sum(count_macs(model, data.example_input()).values()),
    )
    return metrics, logits
