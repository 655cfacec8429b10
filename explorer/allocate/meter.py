"""Measuring a plan's achieved value for its target, after the fact (temporary ONNX files)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from explorer.methods import Method
from explorer.plan import PruningPlan
from explorer.runtime import OrtModel, export_onnx, gzip_size, measure_latency
from explorer.subject import Subject

if TYPE_CHECKING:
    from explorer.allocate.core import Target

__all__ = ["Meter"]


class Meter:
    """Measures plans for one target; ``close()`` removes its temporary files."""

    def __init__(self, subject: Subject, target: Target, method: Method, rounds_of_timing: int = 3) -> None:
        self.subject, self.target, self.method = subject, target, method
        self.rounds_of_timing = rounds_of_timing
        self.tmp = tempfile.TemporaryDirectory(prefix="explorer-allocate-")
        self.size_metric = target.kind_spec.size_metric(method)
        self._dense_session: OrtModel | None = None

    def close(self) -> None:
        self.tmp.cleanup()

    def __call__(self, plan: PruningPlan) -> float:
        return self.target.kind_spec.measure(self, self.subject.prune(plan))

    def size(self, model: nn.Module, name: str) -> int:
        """Bytes of ``model``'s ONNX file, gzipped when the size metric is the gzip size."""
        path = export_onnx(model, self.subject.example_input, Path(self.tmp.name) / name)
        return path.stat().st_size if self.size_metric == "onnx_bytes" else gzip_size(path)

    def latency_ratio(self, model: nn.Module) -> float:
        """Pruned over dense median latency, the two timed in alternation to share the machine's state."""
        x = self.subject.example_input
        if self._dense_session is None:
            path = export_onnx(self.subject.model, x, Path(self.tmp.name) / "dense.onnx")
            self._dense_session = OrtModel(path, threads=self.subject.threads)
        pruned = OrtModel(export_onnx(model, x, Path(self.tmp.name) / "pruned.onnx"), threads=self.subject.threads)
        dense_ms, pruned_ms = [], []
        for _ in range(self.rounds_of_timing):
            dense_ms.append(measure_latency(self._dense_session, x.numpy(), runs=self.subject.runs).median_ms)
            pruned_ms.append(measure_latency(pruned, x.numpy(), runs=self.subject.runs).median_ms)
        return statistics.median(pruned_ms) / statistics.median(dense_ms)
