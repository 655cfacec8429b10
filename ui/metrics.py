"""Metric cards: an ``Evaluation`` turned into labelled values with changes against dense.

Pure Python (no streamlit); ``ui.widgets.metric_row`` draws the cards with ``st.metric``. Labels,
formats and help come from ``explorer.metricspec``. The two latency cards show the interleaved
speedup (dense and pruned timed alternately in one window, ``explorer.runtime.Speedup``): the
median of the per-round ratios, "within noise" when the rounds' range covers 1.0x, the p90 by the
same rule with the dense p90 from the same window.
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.evaluate import Evaluation
from explorer.metricspec import SPECS, MetricSpec, fmt_bytes, fmt_count
from explorer.runtime import RoundRatios, Speedup

__all__ = [
    "FAR_BELOW",
    "Card",
    "accuracy_warning",
    "cards",
    "fmt_bytes",
    "fmt_count",
    "latency_card",
]

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


def _ratios(spec: MetricSpec, speedup: Speedup) -> RoundRatios:
    return speedup.p90 if spec.key == "latency_ms_p90" else speedup.median


def latency_card(spec: MetricSpec, evaluation: Evaluation) -> Card:
    """A latency card: the pruned latency of the window, and the change the interleaved per-round
    ratios give (e.g. "-24.2 % · 1.32x"), "within noise" when their range covers 1.0x."""
    value, dense = getattr(evaluation.pruned, spec.key), getattr(evaluation.dense, spec.key)
    sp = evaluation.speedup
    if sp is None:  # the dense model alone
        return Card(spec.label, spec.format(value), None, "off", "", help=spec.help, arrow="off")
    r = _ratios(spec, sp)
    quiet = r.within_noise
    delta = f"{100 * (1 / r.value - 1):+.1f} % · {r.value:.2f}x"
    stat = "p90s" if spec.key == "latency_ms_p90" else "medians"
    help_text = (
        f"{spec.help} Dense and pruned were timed alternately in one window: {sp.rounds} rounds of "
        f"{sp.runs_per_round} runs each, {sp.pruned.threads} thread(s). Speedup = dense / pruned "
        "per round "
        f"({stat}): median {r.value:.2f}x, rounds {r.low:.2f}x to {r.high:.2f}x; within noise "
        "when that "
        f"range covers 1.0x. Dense in this window: {spec.format(dense)}."
    )
    return Card(
        spec.label,
        spec.format(value),
        delta,
        "off" if quiet else "inverse",
        "within noise" if quiet else "vs dense",
        help=help_text,
        arrow="off" if quiet else "auto",
    )


def accuracy_warning(accuracy: float, dense: float, n_classes: int, labelled: bool = True) -> str:
    """A warning when ``accuracy`` is near chance or far below dense ('' when it is neither).

    Near chance: the plan kept less than a tenth of what the dense model scores above chance
    (1 / ``n_classes``). Far below: more than 10 points under dense.
    """
    what = "accuracy" if labelled else "agreement with the dense model"
    chance = 1.0 / max(n_classes, 1)
    if dense > chance and accuracy - chance < 0.1 * (dense - chance):
        return (
            f"The {what} ({100 * accuracy:.2f} %) is near chance ({100 * chance:.1f} % for"
            f" {n_classes} classes): this plan breaks the model. Recover it on the Recover page"
            " (fine-tuning) or choose a looser target."
        )
    if dense - accuracy > FAR_BELOW:
        return (
            f"The {what} ({100 * accuracy:.2f} %) is {100 * (dense - accuracy):.1f} points below"
            f" dense ({100 * dense:.2f} %). Recover it on the Recover page (fine-tuning) or choose"
            " a looser target."
        )
    return ""


def cards(evaluation: Evaluation) -> list[Card]:
    """Cards for every metric of ``evaluation``, in the order of ``explorer.metricspec.SPECS``."""
    labels = evaluation.labels
    out = []
    for spec in SPECS:
        if spec.unit == "ms":
            out.append(latency_card(spec, evaluation))
            continue
        value, dense = getattr(evaluation.pruned, spec.key), getattr(evaluation.dense, spec.key)
        tip = spec.describe(labels)
        if spec.unit in ("count", "bytes"):
            tip += f" Dense: {spec.format(dense, compact=True)}."
        out.append(
            Card(
                spec.name(labels),
                spec.format(value, compact=True),
                spec.delta(value, dense),
                "normal" if spec.better == "higher" else "inverse",
                help=tip,
            )
        )
    return out
