"""What a Learn experiment is and what it returns, with the small helpers every experiment file
shares (the percent format and the line figure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from explorer.plan import PruningPlan
from explorer.progress import Progress
from explorer.subject import Subject

__all__ = ["Experiment", "LearnResult", "lines", "pct"]


@dataclass
class LearnResult:
    key: str
    table: pd.DataFrame
    figure: go.Figure
    text: str  # the measured result, with its numbers
    holds: bool | None  # does the claim hold on this model? None: no yes/no question
    model: str  # model spec of the configuration to continue with
    plan: PruningPlan | None = None  # the configuration to load into the Prune page
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    key: str
    title: str
    claim: str
    model: str
    run: Callable[[Subject, Progress], LearnResult]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def lines(
    df: pd.DataFrame, x: str, y: str, series: str, title: str, xtitle: str, ytitle: str
) -> go.Figure:
    fig = go.Figure()
    for name, part in df.groupby(series, sort=False):
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="lines+markers", name=str(name)))
    fig.update_layout(
        title=title,
        xaxis_title=xtitle,
        yaxis_title=ytitle,
        legend_title=series,
        margin=dict(l=40, r=20, t=50, b=40),
        height=380,
    )
    return fig
