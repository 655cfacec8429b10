"""Plotly figure builders: pure functions from library results to ``go.Figure`` (no streamlit).

Pages only call these, so every chart can be checked in a unit test (traces, axes, values).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.methods import get_method
from explorer.weights import LayerView

__all__ = [
    "block_sensitivity",
    "channel_bars",
    "mask_heatmap",
    "pareto",
    "pareto_front",
    "schedule_steps",
    "sensitivity_curves",
    "weight_histogram",
]

KEPT, GONE, DENSE, FADED = "#4C78A8", "#E45756", "#2CA02C", "rgba(150,150,150,0.35)"


PALETTE = (
    "#1F77B4",
    "#FF7F0E",
    "#2CA02C",
    "#D62728",
    "#9467BD",
    "#8C564B",
    "#E377C2",
    "#7F7F7F",
    "#BCBD22",
    "#17BECF",
)


def _layout(fig: go.Figure, height: int, legend_below: bool = False) -> go.Figure:
    """Common layout: the title on the left, the legend top right (or below the plot)."""
    legend = (
        {"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0}
        if legend_below
        else {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1}
    )
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={**legend, "traceorder": "normal"},
        title={"x": 0, "xanchor": "left", "y": 0.98, "yanchor": "top"},
    )
    return fig


def weight_histogram(view: LayerView, log_y: bool = False, bins: int = 80) -> go.Figure:
    """Histogram of the layer's weights: kept ones and those the method removes, on shared bins.

    When the mask is a magnitude cut, the band ``|w| <= threshold`` is shaded and its edges drawn.
    """
    w, keep = view.weights.ravel(), view.keep.ravel()
    lo, hi = float(w.min()), float(w.max())
    size = (hi - lo) / bins if hi > lo else 1.0
    xbins = {"start": lo, "end": hi + size, "size": size}
    fig = go.Figure()
    fig.add_histogram(x=w[keep], name=f"kept ({int(keep.sum()):,})", marker_color=KEPT, xbins=xbins)
    fig.add_histogram(
        x=w[~keep], name=f"removed ({int((~keep).sum()):,})", marker_color=GONE, xbins=xbins
    )
    fig.update_layout(barmode="stack", bargap=0.02)
    if view.threshold is not None:
        t = view.threshold
        fig.add_vrect(x0=-t, x1=t, fillcolor=GONE, opacity=0.12, line_width=0)
        for x in (-t, t):
            fig.add_vline(x=x, line_dash="dash", line_color=GONE)
        fig.add_annotation(
            x=t,
            y=1,
            yref="paper",
            text=f"|w| ≤ {t:.3g} go",
            showarrow=False,
            xanchor="left",
            yanchor="top",
            font={"color": GONE},
        )
    fig.update_xaxes(title_text="weight value")
    fig.update_yaxes(
        title_text="weights (log scale)" if log_y else "weights", type="log" if log_y else "linear"
    )
    fig.update_layout(
        title_text=(
            f"{view.name}: {view.method} at {view.ratio:.0%} "
            f"({view.pruned_share:.1%} of weights removed)"
        )
    )
    return _layout(fig, 380)


def channel_bars(view: LayerView) -> go.Figure:
    """Importance of each output channel (structured methods), the removed ones in red."""
    if view.channel_scores is None or view.removed is None:
        raise ValueError(f"{view.method} is not structured: it has no channel scores")
    scores = view.channel_scores
    gone = np.zeros(len(scores), dtype=bool)
    gone[view.removed] = True
    fig = go.Figure()
    idx = np.arange(len(scores))
    fig.add_bar(
        x=idx[~gone], y=scores[~gone], name=f"kept ({int((~gone).sum())})", marker_color=KEPT
    )
    fig.add_bar(x=idx[gone], y=scores[gone], name=f"removed ({int(gone.sum())})", marker_color=GONE)
    if gone.any():
        fig.add_hline(y=float(scores[gone].max()), line_dash="dash", line_color=GONE)
    fig.update_layout(
        barmode="overlay",
        bargap=0.1,
        title_text=(
            f"{view.name}: output-channel importance ({get_method(view.method).score_label})"
        ),
    )
    fig.update_xaxes(title_text="output channel")
    fig.update_yaxes(title_text="importance")
    return _layout(fig, 320)


def mask_heatmap(view: LayerView, max_cols: int = 576) -> go.Figure:
    """The keep mask as a picture: rows are output channels, columns the flattened inputs.

    Shows at most ``max_cols`` input columns (the title says when the picture is cropped).
    """
    keep = view.keep.reshape(view.keep.shape[0], -1)
    n_rows, n_cols = keep.shape
    shown = min(n_cols, max_cols)
    z = keep[:, :shown].astype(np.int8)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            zmin=0,
            zmax=1,
            colorscale=[[0, GONE], [0.5, GONE], [0.5, KEPT], [1, KEPT]],
            showscale=False,
            hovertemplate="output %{y}, input %{x}: %{customdata}<extra></extra>",
            customdata=np.where(z == 1, "kept", "removed"),
        )
    )
    crop = f", first {shown} of {n_cols} inputs shown" if shown < n_cols else ""
    fig.update_layout(
        title_text=f"Mask of {view.name}: blue kept, red removed ({n_rows} x {n_cols}{crop})"
    )
    fig.update_xaxes(title_text="input (in-channel x kernel position, flattened)")
    fig.update_yaxes(title_text="output channel", autorange="reversed")
    return _layout(fig, max(260, min(700, 4 * n_rows + 120)))


def sensitivity_curves(df: pd.DataFrame, highlight: str | None = None) -> go.Figure:
    """Accuracy and loss against ratio, one line per layer (or group); ``highlight`` stands out."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Accuracy", "Loss"), horizontal_spacing=0.08
    )
    for i, (layer, rows) in enumerate(df.groupby("layer", sort=False)):
        rows = rows.sort_values("ratio")
        faded = highlight is not None and layer != highlight
        color = FADED if faded else PALETTE[i % len(PALETTE)]
        line = {"width": 1 if faded else (3 if highlight else 2), "color": color}
        for col, metric in ((1, "accuracy"), (2, "loss")):
            y = 100 * rows[metric] if metric == "accuracy" else rows[metric]
            fig.add_scatter(
                x=100 * rows["ratio"],
                y=y,
                mode="lines+markers",
                name=layer,
                legendgroup=layer,
                showlegend=col == 1,
                line=line,
                marker={"size": 5, "color": color},
                row=1,
                col=col,
                hovertemplate=f"{layer}<br>%{{x:.0f}} % pruned: %{{y:.4g}}<extra></extra>",
            )
    fig.update_xaxes(title_text="pruned (%)")
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=2)
    return _layout(fig, 460, legend_below=True)


def block_sensitivity(df: pd.DataFrame, labels: bool = True) -> go.Figure:
    """Accuracy with each block removed alone (one bar per block, model order) against the dense
    model's (the dashed line); hovering says what the block's removal saves."""
    removed = df[df["ratio"] > 0]
    dense = 100 * float(df[df["ratio"] == 0]["accuracy"].iloc[0])
    fig = go.Figure()
    fig.add_bar(
        x=100 * removed["accuracy"],
        y=removed["layer"],
        orientation="h",
        marker={"color": PALETTE[0]},
        customdata=np.stack([removed["params"], removed["macs"]], axis=-1),
        hovertemplate=(
            "%{y} removed: %{x:.2f} %<br>saves %{customdata[0]:,} parameters,"
            " %{customdata[1]:,} MACs<extra></extra>"
        ),
        name="block removed",
    )
    fig.add_vline(
        x=dense,
        line={"dash": "dash", "color": DENSE},
        annotation_text="dense",
        annotation_position="top left",
    )
    fig.update_yaxes(autorange="reversed", title_text="block removed (the identity)")
    fig.update_xaxes(
        title_text=("accuracy" if labels else "agreement with the dense model") + " (%)",
        range=[0, 100],
    )
    return _layout(fig, 120 + 28 * len(removed))


def pareto_front(cost: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats (lower or equal cost and higher or equal
    gain,
    one of them strictly)."""
    cost, gain = np.asarray(cost, dtype=float), np.asarray(gain, dtype=float)
    front = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        beaten = (cost <= cost[i]) & (gain >= gain[i]) & ((cost < cost[i]) | (gain > gain[i]))
        front[i] = not beaten.any()
    return front


def pareto(history: pd.DataFrame, current: int | None = None) -> go.Figure:
    """Accuracy against ORT latency and against gzipped size, one point per configuration tried.

    ``history`` has columns ``n`` (0 is the dense model), ``accuracy``, ``latency_ms_median``,
    ``onnx_gzip_bytes`` and ``summary``; the Pareto front of each panel is joined by a line.
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.08,
        subplot_titles=("Accuracy vs ORT latency", "Accuracy vs gzipped ONNX size"),
    )
    acc = 100 * history["accuracy"].to_numpy()
    for col, key, scale, unit in (
        (1, "latency_ms_median", 1.0, "ms"),
        (2, "onnx_gzip_bytes", 1e-3, "kB"),
    ):
        x = history[key].to_numpy() * scale
        front = pareto_front(x, acc)
        order = np.argsort(x[front])
        fig.add_scatter(
            x=x[front][order],
            y=acc[front][order],
            mode="lines",
            line={"color": KEPT, "dash": "dot"},
            name="Pareto front",
            showlegend=col == 1,
            hoverinfo="skip",
            row=1,
            col=col,
        )
        colors = [DENSE if n == 0 else (GONE if n == current else KEPT) for n in history["n"]]
        sizes = [14 if n in (0, current) else 9 for n in history["n"]]
        labels = ["dense" if n == 0 else f"#{n}" for n in history["n"]]
        fig.add_scatter(
            x=x,
            y=acc,
            mode="markers+text",
            text=labels,
            textposition="top center",
            marker={"color": colors, "size": sizes},
            customdata=history["summary"],
            name="configurations",
            showlegend=False,
            row=1,
            col=col,
            hovertemplate=(
                f"%{{text}}: %{{customdata}}<br>%{{x:.3f}} {unit}, %{{y:.2f}} %<extra></extra>"
            ),
        )
        fig.update_xaxes(
            title_text=f"{'median latency' if col == 1 else 'gzipped ONNX'} ({unit})",
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    return _layout(fig, 420, legend_below=True)


def recovery_bars(rows: list[dict]) -> go.Figure:
    """Accuracy and gzipped size of each stage of the recovery loop (dense, pruned, recovered,
    int8)."""
    stages = [r["stage"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Accuracy (%)", "Gzipped ONNX (kB)"))
    fig.add_trace(
        go.Bar(
            x=stages,
            y=[100 * r["accuracy"] for r in rows],
            name="accuracy",
            text=[f"{100 * r['accuracy']:.1f}" for r in rows],
            textposition="outside",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=stages,
            y=[r["onnx_gzip_bytes"] / 1e3 for r in rows],
            name="gzipped ONNX",
            text=[f"{r['onnx_gzip_bytes'] / 1e3:.0f}" for r in rows],
            textposition="outside",
        ),
        row=1,
        col=2,
    )
    fig.update_layout(showlegend=False)
    return _layout(fig, 340)


def finetune_curve(epochs: list[dict]) -> go.Figure:
    """Validation accuracy per fine-tuning epoch (epoch 0: the model before fine-tuning) and the
    training loss per epoch; data without a validation split shows the training loss alone."""
    with_val = any(e.get("val_accuracy") is not None for e in epochs)
    trained = [e for e in epochs if e.get("train_loss") is not None]
    fig = make_subplots(specs=[[{"secondary_y": with_val}]])
    if with_val:
        fig.add_scatter(
            x=[e["epoch"] for e in epochs],
            y=[100 * e["val_accuracy"] if e["val_accuracy"] is not None else None for e in epochs],
            mode="lines+markers",
            name="validation accuracy (%)",
            line={"color": KEPT},
        )
        fig.update_yaxes(title_text="validation accuracy (%)", secondary_y=False)
    fig.add_scatter(
        x=[e["epoch"] for e in trained],
        y=[e["train_loss"] for e in trained],
        mode="lines+markers",
        name="training loss",
        line={"color": GONE, "dash": "dot" if with_val else "solid"},
        secondary_y=True if with_val else None,
    )
    fig.update_yaxes(title_text="training loss", secondary_y=True if with_val else None)
    fig.update_xaxes(title_text="epoch", dtick=1)
    if not with_val:
        fig.update_layout(
            title_text="No validation split: the training loss per epoch (the last epoch is kept)"
        )
    return _layout(fig, 300)


def schedule_steps(steps: list[dict]) -> go.Figure:
    """A schedule's measured steps in order: test accuracy (left axis) and the sparsity of the
    plan's layers (right axis); hover names each step (phase, round, epoch)."""
    x = list(range(len(steps)))
    labels = [
        s["phase"]
        + (f", round {s['round']}" if s["round"] else "")
        + (f", epoch {s['epoch']}" if s["epoch"] is not None else "")
        + (f", step {s['step']}" if s["step"] is not None else "")
        for s in steps
    ]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(
        x=x,
        y=[None if s["accuracy"] is None else 100 * s["accuracy"] for s in steps],
        mode="lines+markers",
        name="test accuracy (%)",
        text=labels,
        line={"color": PALETTE[0]},
        hovertemplate="%{text}<br>test accuracy %{y:.2f} %<extra></extra>",
        secondary_y=False,
    )
    fig.add_scatter(
        x=x,
        y=[100 * s["sparsity"] for s in steps],
        mode="lines+markers",
        name="sparsity (%)",
        text=labels,
        line={"color": PALETTE[1], "dash": "dot"},
        marker={"symbol": "square"},
        hovertemplate="%{text}<br>sparsity %{y:.1f} %<extra></extra>",
        secondary_y=True,
    )
    fig.update_xaxes(
        title_text="step",
        tickmode="array",
        tickvals=x,
        ticktext=[s["phase"][0].upper() if s["epoch"] is None else str(s["epoch"]) for s in steps],
    )
    fig.update_yaxes(title_text="test accuracy (%)", secondary_y=False)
    fig.update_yaxes(
        title_text="sparsity of the plan's layers (%)",
        range=[0, 100],
        tickmode="linear",
        dtick=25,
        showgrid=False,
        secondary_y=True,
    )
    return _layout(fig, 340)


def proxy_curves(df: pd.DataFrame, highlight: str | None = None) -> go.Figure:
    """The data-free tier: share of each unit's weight magnitude removed against ratio."""
    fig = go.Figure()
    for i, (layer, rows) in enumerate(df.groupby("layer", sort=False)):
        rows = rows.sort_values("ratio")
        faded = highlight is not None and layer != highlight
        color = FADED if faded else PALETTE[i % len(PALETTE)]
        fig.add_scatter(
            x=100 * rows["ratio"],
            y=100 * rows["magnitude_removed"],
            mode="lines+markers",
            name=layer,
            line={"width": 1 if faded else 2, "color": color},
            marker={"size": 4, "color": color},
            hovertemplate=(
                f"{layer}<br>%{{x:.0f}} % pruned: %{{y:.1f}} % of the magnitude<extra></extra>"
            ),
        )
    fig.update_xaxes(title_text="pruned (%)")
    fig.update_yaxes(title_text="weight magnitude removed (%)")
    return _layout(fig, 360, legend_below=True)


def latency_curves(df: pd.DataFrame) -> go.Figure:
    """Measured ORT latency with one group pruned, as a share of the dense latency timed in the same
    window (median of the rounds, their range as error bars), against the share of channels pruned
    (the staircase: fewer channels are not always faster)."""
    fig = go.Figure()
    for i, (layer, rows) in enumerate(df.groupby("layer", sort=False)):
        rows = rows.sort_values("ratio")
        color = PALETTE[i % len(PALETTE)]
        share = rows["latency_share"]
        fig.add_scatter(
            x=100 * rows["ratio"],
            y=100 * share,
            mode="lines+markers",
            name=layer,
            line={"width": 2, "color": color, "shape": "hv"},
            marker={"size": 5, "color": color},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": 100 * (rows["latency_share_high"] - share),
                "arrayminus": 100 * (share - rows["latency_share_low"]),
                "visible": True,
                "thickness": 1,
            },
            customdata=np.stack(
                [rows["channels_kept"], rows["latency_ms_median"], rows["dense_ms_median"]], axis=1
            ),
            hovertemplate=(
                f"{layer}<br>%{{x:.0f}} % pruned, %{{customdata[0]}} channels kept<br>%{{y:.1f}} %"
                " of the dense latency: %{customdata[1]:.3f} ms vs %{customdata[2]:.3f}"
                " ms<extra></extra>"
            ),
        )
    fig.add_hline(y=100, line={"width": 1, "dash": "dot", "color": "#888"})
    fig.update_xaxes(title_text="channels pruned in this group only (%)")
    fig.update_yaxes(title_text="ORT latency, % of dense (timed alternately)")
    return _layout(fig, 380, legend_below=True)


def allocation_front(rows: list[dict]) -> go.Figure:
    """Allocations for several targets: verified (and predicted) accuracy against what each
    achieved.

    ``rows``: ``Allocation.to_dict()`` objects of one target kind.
    """
    kind = rows[0]["target"]["kind"] if rows else ""
    x = [100 * r["achieved"] for r in rows]
    fig = go.Figure()
    fig.add_scatter(
        x=x,
        y=[100 * (r["verified_accuracy"] or 0) for r in rows],
        mode="lines+markers",
        name="verified",
        line={"color": PALETTE[0], "width": 2},
        hovertemplate="%{x:.1f}: verified %{y:.2f} %<extra></extra>",
    )
    fig.add_scatter(
        x=x,
        y=[100 * r["predicted_accuracy"] for r in rows],
        mode="lines+markers",
        name="predicted",
        line={"color": PALETTE[1], "dash": "dot", "width": 2},
        hovertemplate="%{x:.1f}: predicted %{y:.2f} %<extra></extra>",
    )
    unit = "weights removed (%)" if kind == "sparsity" else f"{kind} kept, % of dense"
    fig.update_xaxes(title_text=unit)
    fig.update_yaxes(title_text="accuracy (%)")
    return _layout(fig, 340, legend_below=True)
