"""Plotly figures of task affinity, measured transfer, groupings and the probes' validity."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.viz.conflict import matrix_slider

__all__ = ["affinity_slider", "affinity_graph", "affinity_dendrogram", "predicted_vs_measured", "payoff_figure", "validity_figure"]


def affinity_slider(history: xr.Dataset, title: str) -> go.Figure:
    """The ``(source, target)`` affinity at each recorded step, with a slider over ``step`` (rows: source)."""
    values = history["affinity"]
    limit = float(np.nanmax(np.abs(values.values))) or 1.0
    return matrix_slider(values, title, colour_range=limit, row_title="source task", column_title="target task")


def affinity_graph(affinity: xr.DataArray, title: str, top: int | None = None) -> go.Figure:
    """Tasks on a circle and an arrow ``i → j`` for the strongest affinities (blue helps, red hurts; width ∝ |Z|).

    ``top`` keeps that many arrows (default: twice the number of tasks).
    """
    tasks = [str(t) for t in affinity.source.values]
    n = len(tasks)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    xs, ys = np.cos(angles), np.sin(angles)
    values = affinity.values.astype(float).copy()
    np.fill_diagonal(values, np.nan)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and np.isfinite(values[i, j])]
    pairs.sort(key=lambda p: -abs(values[p]))
    pairs = pairs[: top or 2 * n]
    largest = max((abs(values[p]) for p in pairs), default=1.0) or 1.0
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=tasks, textposition="top center", marker=dict(size=18, color="#999"), hoverinfo="text"))
    for i, j in pairs:
        shrink = 0.12  # stop short of the nodes
        fig.add_annotation(
            x=xs[j] - shrink * (xs[j] - xs[i]), y=ys[j] - shrink * (ys[j] - ys[i]), ax=xs[i] + shrink * (xs[j] - xs[i]), ay=ys[i] + shrink * (ys[j] - ys[i]),
            xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1,
            arrowwidth=1 + 4 * abs(values[i, j]) / largest, arrowcolor="#2166ac" if values[i, j] > 0 else "#b2182b",
            hovertext=f"{tasks[i]} → {tasks[j]}: {values[i, j]:+.3g}",
        )
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"), showlegend=False)
    return fig


def affinity_dendrogram(affinity: xr.DataArray, title: str) -> go.Figure:
    """Average-linkage clustering of the tasks on the symmetrised affinity (height: max affinity − affinity)."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    tasks = [str(t) for t in affinity.source.values]
    similarity = (affinity.values + affinity.values.T) / 2
    distance = np.nanmax(similarity) - similarity
    np.fill_diagonal(distance, 0)
    tree = dendrogram(linkage(squareform(distance, checks=False), method="average"), labels=tasks, no_plot=True)
    fig = go.Figure([go.Scatter(x=x, y=y, mode="lines", line=dict(color="#444"), hoverinfo="skip") for x, y in zip(tree["icoord"], tree["dcoord"])])
    fig.update_layout(
        title=title, showlegend=False, yaxis_title="max affinity − affinity",
        xaxis=dict(tickmode="array", tickvals=[5 + 10 * i for i in range(len(tasks))], ticktext=tree["ivl"]),
    )
    return fig


def predicted_vs_measured(affinities: dict[str, xr.DataArray], gain: xr.DataArray) -> go.Figure:
    """Each directed pair's affinity (x) against its measured gain (y, mean over seeds, bars one std), one panel per affinity."""
    from scipy.stats import spearmanr

    tasks = [str(t) for t in gain.source.values]
    off = ~np.eye(len(tasks), dtype=bool)
    mean, spread = gain.mean("seed").values[off], gain.std("seed").values[off]
    labels = [f"{a}→{b}" for a in tasks for b in tasks if a != b]
    fig = make_subplots(rows=1, cols=len(affinities), subplot_titles=[
        f"{name} (Spearman ρ = {spearmanr(affinity.sel(source=tasks, target=tasks).values[off], mean).statistic:+.2f})" for name, affinity in affinities.items()
    ])
    for column, affinity in enumerate(affinities.values(), start=1):
        x = affinity.sel(source=tasks, target=tasks).values[off]
        fig.add_trace(go.Scatter(x=x, y=mean, error_y=dict(type="data", array=spread), mode="markers", text=labels,
                                 hovertemplate="%{text}: affinity %{x:.3g}, gain %{y:.3f}<extra></extra>", showlegend=False), row=1, col=column)
        fig.update_xaxes(title_text="affinity", row=1, col=column)
    fig.update_yaxes(title_text="measured gain", row=1, col=1)
    fig.update_layout(title="Predicted against measured transfer, one point per directed pair")
    return fig


def payoff_figure(payoff: xr.Dataset) -> go.Figure:
    """The relative test loss of every chosen grouping (mean over seeds) against random groupings of the same size (boxes)."""
    fig = go.Figure()
    for k in payoff.k.values:
        fig.add_trace(go.Box(y=payoff.random_loss.sel(k=k).mean("seed").values, name=f"random, k={k}", marker_color="#bbb", boxpoints=False))
    chosen = payoff.relative_loss.mean("seed")
    fig.add_trace(go.Bar(
        x=[str(g) for g in chosen.grouping.values], y=chosen.values, marker_color="#4c78a8",
        customdata=payoff.groups.values, hovertemplate="%{x}: %{y:.3f}<br>%{customdata}<extra></extra>",
        error_y=dict(type="data", array=payoff.relative_loss.std("seed").values),
    ))
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_layout(title="Test loss of each grouping relative to training every task alone (lower is better)", yaxis_title="mean relative test loss", showlegend=False)
    return fig


def validity_figure(study: xr.Dataset) -> go.Figure:
    """The Spearman correlation of each probe with each truth over the random configurations, per optimizer."""
    fig = make_subplots(rows=1, cols=study.sizes["truth"], shared_yaxes=True, subplot_titles=[f"against the {t}" for t in study.truth.values])
    colours = {"sgd": "#f58518", "adam": "#4c78a8"}
    for column, truth in enumerate(study.truth.values, start=1):
        for optimizer in study.optimizer.values:
            chosen = study.spearman.sel(truth=truth, optimizer=optimizer)
            fig.add_trace(go.Box(
                x=np.repeat(chosen.probe.values, chosen.sizes["configuration"]), y=chosen.transpose("probe", "configuration").values.ravel(),
                name=str(optimizer), legendgroup=str(optimizer), showlegend=column == 1, marker_color=colours.get(str(optimizer)), boxpoints="all", jitter=0.3,
            ), row=1, col=column)
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(boxmode="group", title=f"How well each probe recovers the truth over {study.sizes['configuration']} random problems", yaxis_title="Spearman ρ")
    return fig
