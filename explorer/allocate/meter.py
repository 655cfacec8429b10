"""Measuring a plan's achieved value for its target, after the fact (temporary ONNX files)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from explorer.methods import Method
from explorer.onnx_template import write_onnx
from explorer.plan import PruningPlan
from explorer.runtime import OrtModel, Speedup, gzip_size
from explorer.subject import Subject

if TYPE_CHECKING:
    from explorer.allocate.core import Target

__all__ = ["Meter"]


class Meter:
    """Measures plans for one target; ``close()`` removes its temporary files."""

    def __init__(self, subject: Subject, target: Target, method: Method) -> None:
        self.subject, self.target, self.method = subject, target, method
        self.tmp = tempfile.TemporaryDirectory(prefix="explorer-allocate-")
        self.size_metric = target.kind_spec.size_metric(method)
        self.last: Speedup | None = (
            None  # the interleaved timing of the last plan measured (timed targets)
        )

    def close(self) -> None:
        self.tmp.cleanup()

    def __call__(self, plan: PruningPlan) -> float:
        self.last = None
        return self.target.kind_spec.measure(self, self.subject.prune(plan))

    def size(self, model: nn.Module, name: str) -> int:
        """Bytes of ``model``'s ONNX file, gzipped when the size metric is the gzip size."""
        path = Path(self.tmp.name) / name
        write_onnx(
            self.subject, model, path
        )  # the exporter's bytes, from the dense export's template
        return path.stat().st_size if self.size_metric == "onnx_bytes" else gzip_size(path)

    def latency(self, model: nn.Module) -> Speedup:
        """Dense over ``model``'s latency, the two timed alternately in one window
        (``Subject.speedup``); kept for the plan being measured."""
        path = Path(self.tmp.name) / "pruned.onnx"
        write_onnx(
            self.subject, model, path
        )  # the exporter's bytes, from the dense export's template
        self.last = self.subject.speedup(OrtModel(path, threads=self.subject.threads))
        return self.last
