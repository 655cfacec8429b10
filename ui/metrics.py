"""Metric cards: the ``evaluate`` object turned into labelled values with deltas against dense.

Pure Python (no streamlit); ``ui.widgets.metric_row`` draws the cards with ``st.metric``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FAR_BELOW", "NOISE_SHARE", "Card", "accuracy_warning", "cards", "fmt_bytes", "fmt_count",
           "latency_noise_ms", "within_noise"]

# Repeated measurements of the same dense digits-cnn on the shared 2-core machine gave medians
# 0.434-0.455 ms (about +-2.5 % around their middle), while each run's own spread (median absolute
# deviation) was 0.001-0.008 ms: the spread alone understates how much two measurements differ.
NOISE_SHARE = 0.05
FAR_BELOW = 0.10  # accuracy more than 10 points below dense is flagged (accuracy_warning)


@dataclass(frozen=True)
class Card:
    label: str
    value: str
    delta: str | int | None
    delta_color: str = "normal"  # normal: up is good; inverse: down is good; off: gray
    description: str = "vs dense"
    help: str = ""
    arrow: str = "auto"  # "off" for deltas that are notes, not changes


def fmt_count(n: float) -> str:
    """12,345 below a million; 1.23 M above."""
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{int(round(n)):,}"


def fmt_bytes(n: float) -> str:
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} B"


def latency_noise_ms(pruned: dict[str, Any], dense: dict[str, Any], key: str = "latency_ms_median") -> float:
    """Smallest latency change worth reporting for ``key``.

    Median: 3x the runs' spreads, at least 5 % of dense. p90: the tail of a run is where a busy
    machine's interruptions land, so it moves far more than the median between two runs of the
    same model; its band is the median's, widened to the larger tail width (p90 - median) of the
    two runs.
    """
    spread = 3 * (pruned["latency_ms_spread"] + dense["latency_ms_spread"])
    band = max(spread, NOISE_SHARE * dense["latency_ms_median"])
    if key == "latency_ms_p90":
        tails = [r["latency_ms_p90"] - r["latency_ms_median"] for r in (pruned, dense)]
        band = max(band, *tails)
    return band


def within_noise(pruned: dict[str, Any], dense: dict[str, Any], key: str = "latency_ms_median") -> bool:
    return abs(pruned[key] - dense[key]) < latency_noise_ms(pruned, dense, key)


def accuracy_warning(accuracy: float, dense: float, n_classes: int, labelled: bool = True) -> str:
    """A warning when ``accuracy`` is near chance or far below dense ('' when it is neither).

    Near chance: the plan kept less than a tenth of what the dense model scores above chance
    (1 / ``n_classes``). Far below: more than 10 points under dense.
    """
    what = "accuracy" if labelled else "agreement with the dense model"
    chance = 1.0 / max(n_classes, 1)
    if dense > chance and accuracy - chance < 0.1 * (dense - chance):
        return (f"The {what} ({100 * accuracy:.2f} %) is near chance ({100 * chance:.1f} % for {n_classes} classes): "
                "this plan breaks the model. Recover it on the Recover page (fine-tuning) or choose a looser target.")
    if dense - accuracy > FAR_BELOW:
        return (f"The {what} ({100 * accuracy:.2f} %) is {100 * (dense - accuracy):.1f} points below dense "
                f"({100 * dense:.2f} %). Recover it on the Recover page (fine-tuning) or choose a looser target.")
    return ""


def _relative(pruned: float, dense: float) -> str | int:
    if pruned == dense:
        return 0
    return f"{100 * (pruned - dense) / dense:+.1f} %" if dense else f"{pruned - dense:+,}"


def cards(result: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[Card]:
    """Cards for every metric of ``result`` (an ``evaluate`` object with its ``dense`` part).

    ``baseline``: the dense model measured the way ``result`` was (the evaluation of the empty
    plan); the latency cards compare against it rather than against the measurement taken when
    the model was loaded, so that both sides of a latency delta were timed alike.
    """
    d = result["dense"]
    timed = baseline if baseline is not None else d
    labels = result.get("labels", True)
    acc_label = "Accuracy" if labels else "Agreement"
    loss_label = "Loss" if labels else "KL from dense"
    acc_delta = 100 * (result["accuracy"] - d["accuracy"])
    loss_delta = result["loss"] - d["loss"]
    out = [
        Card(acc_label, f"{100 * result['accuracy']:.2f} %", 0 if acc_delta == 0 else f"{acc_delta:+.2f} pp",
             help=("Top-1 accuracy" if labels else "Top-1 agreement with the dense model")
             + " on the test split, from the pruned model run in ONNX Runtime. pp: percentage points."),
        Card(loss_label, f"{result['loss']:.4f}", 0 if loss_delta == 0 else f"{loss_delta:+.4f}", "inverse",
             help=("Mean cross-entropy" if labels else "Mean KL divergence from the dense model's predictions")
             + " on the test split; lower is better."),
    ]
    threads = f"{result['latency_threads']} thread(s), {result['latency_runs']} timed runs after warm-up"
    for key, label in (("latency_ms_median", "Latency, median"), ("latency_ms_p90", "Latency, p90")):
        noise = latency_noise_ms(result, timed, key)
        change = result[key] - timed[key]
        quiet = abs(change) < noise
        rule = ("3x the runs' spread, at least 5 % of the dense median" if key.endswith("median") else
                "the median's band, or the larger tail (p90 - median) of the two runs: the tail is where a busy "
                "machine's interruptions land")
        out.append(Card(
            label, f"{result[key]:.3f} ms", 0 if change == 0 else f"{change:+.3f} ms",
            "off" if quiet else "inverse",
            "within noise" if quiet else "vs dense",
            help=f"One sample per run, ONNX Runtime CPU, {threads}. Dense, timed the same way: {timed[key]:.3f} ms. "
                 f"Changes under ±{noise:.3f} ms ({rule}) are noise.",
        ))
    for key, label, fmt, tip in (
        ("params_total", "Parameters", fmt_count, "Every parameter of the pruned model (removed channels are gone)."),
        ("params_nonzero", "Nonzero params", fmt_count, "Parameters that are not exactly zero."),
        ("macs", "MACs", fmt_count, "Multiply-accumulates per sample of the conv and linear layers."),
        ("onnx_bytes", "ONNX size", fmt_bytes, "Size of the exported model.onnx."),
        ("onnx_gzip_bytes", "ONNX gzipped", fmt_bytes, "model.onnx after gzip: what zeroed weights save on disk."),
    ):
        out.append(Card(label, fmt(result[key]), _relative(result[key], d[key]), "inverse",
                        help=f"{tip} Dense: {fmt(d[key])}."))
    return out
