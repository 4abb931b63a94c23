"""Plotly figures of gradient conflict; each takes the xarray objects the probes return."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from workbench.probes.conflict import upper_pairs

__all__ = ["agreement_over_training", "cosine_matrix_slider", "matrix_slider", "layer_conflict_heatmap", "pair_cosine_over_time", "reference_vs_measured"]

def _matrix_text(values: np.ndarray) -> list[list[str]]:
    return [["–" if np.isnan(v) else f"{v:.2f}" for v in row] for row in values]


def matrix_slider(values: xr.DataArray, title: str, colour_range: float = 1.0, row_title: str = "", column_title: str = "") -> go.Figure:
    """A ``(step, row, column)`` array as one heatmap per recorded step, with a slider over ``step``.

    Missing values are drawn as empty cells labelled "–"; colours are diverging, ``±colour_range``.
    """
    step_dim, row_dim, column_dim = values.dims
    rows = [str(t) for t in values[row_dim].values]
    columns = [str(t) for t in values[column_dim].values]
    steps = [int(s) for s in values[step_dim].values]
    fig = go.Figure()
    for i, step in enumerate(steps):
        matrix = values.isel({step_dim: i}).values
        fig.add_trace(go.Heatmap(
            z=matrix, x=columns, y=rows, text=_matrix_text(matrix), texttemplate="%{text}", visible=i == len(steps) - 1,
            colorbar=dict(title=values.name), name=f"step {step}", colorscale="RdBu", zmin=-colour_range, zmax=colour_range, zmid=0,
            hovertemplate="%{y} · %{x}: %{z:.3g}<extra>step " + str(step) + "</extra>",
        ))
    slider_steps = [dict(label=str(step), method="update", args=[{"visible": [j == i for j in range(len(steps))]}]) for i, step in enumerate(steps)]
    fig.update_layout(
        title=title, sliders=[dict(active=len(steps) - 1, currentvalue=dict(prefix="step "), steps=slider_steps)],
        xaxis_title=column_title, yaxis=dict(autorange="reversed", scaleanchor="x", title=row_title),
    )
    return fig


def cosine_matrix_slider(history: xr.Dataset, variable: str = "cosine") -> go.Figure:
    """The ``(task, other_task)`` matrix of ``variable`` at each recorded step, with a slider over ``step``."""
    return matrix_slider(history[variable].transpose("step", "task", "other_task"), f"Pairwise gradient {variable.replace('_', ' ')} over training")


def layer_conflict_heatmap(layer_frequency: xr.DataArray) -> go.Figure:
    """Conflict frequency per layer (rows) and task pair (columns), from ``conflict_frequency(...)["layer_frequency"]``."""
    pairs = upper_pairs(layer_frequency).transpose("layer", "pair")
    fig = go.Figure(go.Heatmap(
        z=pairs.values, x=list(pairs.pair.values), y=[str(v) for v in pairs.layer.values],
        colorscale="Reds", zmin=0, zmax=1, colorbar=dict(title="conflict<br>frequency"),
        hovertemplate="%{y} · %{x}: %{z:.2f}<extra></extra>",
    ))
    fig.update_layout(title="How often each task pair conflicts, per layer", xaxis_title="task pair", yaxis_title="layer")
    return fig


def pair_cosine_over_time(history: xr.Dataset, variable: str = "cosine") -> go.Figure:
    """One line per task pair: ``variable`` against training step (gaps where undefined)."""
    pairs = upper_pairs(history[variable])
    fig = go.Figure([
        go.Scatter(x=pairs.step.values, y=pairs.sel(pair=p).values, mode="lines+markers", name=str(p))
        for p in pairs.pair.values
    ])
    fig.add_hline(y=history.attrs.get("threshold", 0.0), line_dash="dot", line_color="grey")
    fig.update_layout(title=f"Pairwise gradient {variable.replace('_', ' ')} during training", xaxis_title="step", yaxis_title=variable)
    return fig


def reference_vs_measured(reference: xr.DataArray, measured: xr.DataArray, rank_correlation: float | None = None) -> go.Figure:
    """Scatter of a reference pairwise relationship (x) against the measured one (y), one point per pair ``i < j``.

    The axes are titled by the arrays' names (``reference.name``: "planted similarity", "target correlation", ...).
    """
    truth = upper_pairs(reference)
    seen = upper_pairs(measured.sel(task=reference.task, other_task=reference.other_task))
    fig = go.Figure(go.Scatter(
        x=truth.values, y=seen.values, mode="markers+text", text=list(truth.pair.values), textposition="top center",
        hovertemplate="%{text}: reference %{x:.2f}, measured %{y:.3f}<extra></extra>",
    ))
    x_title, y_title = reference.name or "reference", measured.name or "measured"
    title = f"{x_title[0].upper()}{x_title[1:]} against {y_title}"
    if rank_correlation is not None:
        title += f" (Spearman ρ = {rank_correlation:.2f})"
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    return fig


def agreement_over_training(curves: dict[str, xr.DataArray]) -> go.Figure:
    """One line per named curve of a rank correlation over ``step`` (from ``rank_correlation_over_training``)."""
    fig = go.Figure([go.Scatter(x=c.step.values, y=c.values, mode="lines+markers", name=name) for name, c in curves.items()])
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    window = next(iter(curves.values())).attrs.get("window")
    fig.update_layout(
        title=f"Agreement of the probe with the reference during training (cosine averaged over {window} records)",
        xaxis_title="step", yaxis_title="Spearman ρ", yaxis_range=[-1, 1],
    )
    return fig
