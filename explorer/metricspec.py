"""One table of the metrics every reader shows: key, label, unit, format, better direction, help.

The app's cards (``ui/metrics.py``) and tables (``ui/widgets.py``, the Recover page), the CLI's
``evaluate`` table and the HTML report all render from :data:`SPECS`, so a metric is named and
formatted in one place. Latencies compared with the dense model are shown with the interleaved
speedup (``explorer.runtime.Speedup``), not as a difference of two numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SPECS", "MetricSpec", "fmt_bytes", "fmt_count", "spec"]

Unit = Literal["fraction", "ms", "count", "bytes", "plain"]


def fmt_count(n: float) -> str:
    """12,345 below a million; 1.23 M above."""
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{int(round(n)):,}"


def fmt_bytes(n: float) -> str:
    """1.53 MB, 12.3 kB or 512 B."""
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MetricSpec:
    """How one metric of an ``Evaluation`` (``Metrics`` field) is named, formatted and compared.

    ``unlabelled``/``unlabelled_help`` replace ``label``/``help`` when the data has no labels
    (accuracy is then agreement with the dense model, loss the KL divergence from it).
    """

    key: str
    label: str  # cards, CLI rows, report rows
    short: str  # table columns
    unit: Unit
    better: Literal["higher", "lower"]
    help: str
    unlabelled: str = ""
    unlabelled_help: str = ""

    def name(self, labels: bool = True) -> str:
        return self.unlabelled if not labels and self.unlabelled else self.label

    def describe(self, labels: bool = True) -> str:
        return self.unlabelled_help if not labels and self.unlabelled_help else self.help

    def format(self, value: float, compact: bool = False) -> str:
        """The value as every reader shows it; ``compact`` (cards) abbreviates large counts and "
        "sizes."""
        if self.unit == "fraction":
            return f"{100 * value:.2f} %"
        if self.unit == "ms":
            return f"{value:.3f} ms"
        if self.unit == "count":
            return fmt_count(value) if compact else f"{int(value):,}"
        if self.unit == "bytes":
            return fmt_bytes(value) if compact else f"{int(value):,} B"
        return f"{value:.4f}"

    def delta(self, value: float, dense: float) -> str | int:
        """The change against dense (0 when there is none): points for fractions, a relative change
        for counts and sizes, a difference otherwise."""
        if value == dense:
            return 0
        if self.unit == "fraction":
            return f"{100 * (value - dense):+.2f} pp"
        if self.unit in ("count", "bytes"):
            return f"{100 * (value - dense) / dense:+.1f} %" if dense else f"{value - dense:+,}"
        if self.unit == "ms":
            return f"{value - dense:+.3f} ms"
        return f"{value - dense:+.4f}"

    @property
    def scale(self) -> float:
        """What tables multiply the value by (fractions are shown in percent)."""
        return 100.0 if self.unit == "fraction" else 1.0

    @property
    def column_format(self) -> str:
        """A printf format for table columns (after :attr:`scale`)."""
        return {"fraction": "%.2f", "ms": "%.3f", "count": "localized", "bytes": "localized"}.get(
            self.unit, "%.4f"
        )

    def column_label(self, labels: bool = True) -> str:
        short = self.short if labels or not self.unlabelled else self.unlabelled.lower()
        suffix = {"fraction": " (%)", "ms": " (ms)"}.get(self.unit, "")
        return short + suffix


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "accuracy",
        "Accuracy",
        "accuracy",
        "fraction",
        "higher",
        "Top-1 accuracy on the test split, from the pruned model run in ONNX Runtime. pp: "
        "percentage points.",
        "Agreement",
        "Top-1 agreement with the dense model on the test split, from the pruned model run in "
        "ONNX Runtime. pp: percentage points.",
    ),
    MetricSpec(
        "loss",
        "Loss",
        "loss",
        "plain",
        "lower",
        "Mean cross-entropy on the test split; lower is better.",
        "KL from dense",
        "Mean KL divergence from the dense model's predictions on the test split; lower is better.",
    ),
    MetricSpec(
        "latency_ms_median",
        "Latency, median",
        "median",
        "ms",
        "lower",
        "Median of the timed runs, ONNX Runtime CPU, batch 1.",
    ),
    MetricSpec(
        "latency_ms_p90",
        "Latency, p90",
        "p90",
        "ms",
        "lower",
        "90th percentile of the timed runs, ONNX Runtime CPU, batch 1: the slow tail, noisier "
        "still on a "
        "busy machine.",
    ),
    MetricSpec(
        "params_total",
        "Parameters",
        "params",
        "count",
        "lower",
        "Every parameter of the pruned model (removed channels are gone).",
    ),
    MetricSpec(
        "params_nonzero",
        "Nonzero params",
        "nonzero",
        "count",
        "lower",
        "Parameters that are not exactly zero.",
    ),
    MetricSpec(
        "macs",
        "MACs",
        "MACs",
        "count",
        "lower",
        "Multiply-accumulates per sample of the conv and linear layers.",
    ),
    MetricSpec(
        "onnx_bytes", "ONNX size", "ONNX", "bytes", "lower", "Size of the exported model.onnx."
    ),
    MetricSpec(
        "onnx_gzip_bytes",
        "ONNX gzipped",
        "gzipped",
        "bytes",
        "lower",
        "model.onnx after gzip: what zeroed weights save on disk.",
    ),
)

_BY_KEY = {s.key: s for s in SPECS}


def spec(key: str) -> MetricSpec:
    """The spec of metric ``key`` (a field of ``explorer.evaluate.Metrics``)."""
    return _BY_KEY[key]
