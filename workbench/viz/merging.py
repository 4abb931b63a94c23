"""Plotly figures of model merging: λ curves, the method comparison, task vectors and TALL masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.progress import batch_run

__all__ = ["lambda_curve_figure", "per_task_curves_figure", "merge_explorer", "merge_comparison_figure", "task_vector_heatmap", "mask_overlap_figure", "interference_figure"]


def lambda_curve_figure(curves: xr.Dataset, title: str) -> go.Figure:
    """The mean normalised score ``(method, lam)`` of each swept method against λ (1: as good as the individual models)."""
    fig = go.Figure([go.Scatter(x=curves.lam.values, y=curves["mean"].sel({"method": m}).values, mode="lines+markers", name=str(m)) for m in curves.method.values])
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    fig.update_layout(title=title, xaxis_title="λ", yaxis_title="mean normalised score (validation)", height=380)
    return fig


def per_task_curves_figure(curves: xr.Dataset, title: str) -> go.Figure:
    """Every task's normalised score ``(method, lam, task)`` against λ, one method at a time (a menu picks it)."""
    methods, tasks = [str(m) for m in curves.method.values], [str(t) for t in curves.task.values]
    fig = go.Figure()
    for i, method in enumerate(methods):
        for task in tasks:
            values = curves.normalised.sel({"method": method, "task": task}).values
            fig.add_trace(go.Scatter(x=curves.lam.values, y=values, mode="lines+markers", name=task, visible=i == 0, legendgroup=task))
    buttons = [
        dict(label=method, method="update", args=[{"visible": [j // len(tasks) == i for j in range(len(methods) * len(tasks))]}])
        for i, method in enumerate(methods)
    ]
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    fig.update_layout(
        title=title, xaxis_title="λ", yaxis_title="normalised score (validation)", height=400,
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")],
    )
    return fig


def merge_explorer(score: Callable[[str, float], xr.DataArray], curves: xr.Dataset, title: str, lam_range: tuple[float, float, float] = (0.0, 1.5, 0.05)):
    """A method menu and a λ slider over each task's normalised score, recomputed live by ``score(method, λ)`` (a ``task`` DataArray).

    The methods are ``curves.method``. In a batch run (a report, where no one can move a slider) this
    returns :func:`per_task_curves_figure` of the precomputed ``curves`` instead of the widgets.
    """
    if batch_run():
        return per_task_curves_figure(curves, title)
    import ipywidgets as widgets
    from IPython.display import display

    low, high, step = lam_range
    method = widgets.Dropdown(options=[str(m) for m in curves.method.values], description="method")
    lam = widgets.FloatSlider(value=0.3, min=low, max=high, step=step, description="λ", continuous_update=False)
    output = widgets.Output()

    def redraw(_=None) -> None:
        scores = score(method.value, lam.value)
        fig = go.Figure(go.Bar(x=[str(t) for t in scores.task.values], y=scores.values, marker_color="#69c"))
        fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
        fig.update_layout(title=f"{title}: {method.value}, λ = {lam.value:.2f}", yaxis_title="normalised score (validation)", height=360)
        output.clear_output(wait=True)
        with output:
            display(fig)

    method.observe(redraw, "value")
    lam.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([method, lam]), output])


def merge_comparison_figure(scores: xr.Dataset, title: str) -> go.Figure:
    """Each method's mean normalised test score (bars, best last) and every task's score (points)."""
    mean = scores.normalised.mean("task").to_series().sort_values()
    fig = go.Figure(go.Bar(x=mean.index, y=mean.values, name="mean over tasks", marker_color="#9ab"))
    for task in scores.task.values:
        fig.add_trace(go.Scatter(x=mean.index, y=scores.normalised.sel(task=task).to_series()[mean.index].values, mode="markers", name=str(task)))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    low = float(np.nanmin(scores.normalised.values))
    fig.update_layout(title=title, yaxis_title="normalised test score", yaxis_range=[min(0.0, low) if low < 0.5 else 0.5, max(1.05, float(np.nanmax(scores.normalised.values)) + 0.02)], height=420)
    return fig


def task_vector_heatmap(similarity: xr.Dataset, title: str) -> go.Figure:
    """The pairwise cosine of the task vectors (whole encoder), with the values printed."""
    cosine = similarity.cosine.values
    tasks = [str(t) for t in similarity.task.values]
    fig = go.Figure(go.Heatmap(z=cosine, x=tasks, y=tasks, zmin=-1, zmax=1, colorscale="RdBu", text=np.round(cosine, 2), texttemplate="%{text}"))
    fig.update_layout(title=title, height=380, yaxis_autorange="reversed")
    return fig


def mask_overlap_figure(overlap: xr.Dataset, title: str) -> go.Figure:
    """How many coordinates are kept by 0, 1, 2, … TALL masks (0: catastrophic, 1: selfish, ≥ 2: consensus)."""
    counts = overlap["count"].values
    labels = [f"{k} ({'catastrophic' if k == 0 else 'selfish' if k == 1 else 'consensus'})" for k in overlap.masks_on.values]
    fig = go.Figure(go.Bar(x=labels, y=counts / counts.sum()))
    fig.update_layout(title=title, xaxis_title="masks on", yaxis_title="share of coordinates", height=360)
    return fig


def interference_figure(pairs: xr.Dataset, title: str) -> go.Figure:
    """Each pair's merged score against its task-vector cosine and its sign-conflict rate."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=["task-vector cosine", "sign conflict after trimming"])
    for col, variable in enumerate(("cosine", "sign_conflict"), start=1):
        fig.add_trace(go.Scatter(x=pairs[variable].values, y=pairs.score.values, mode="markers+text", text=[str(p) for p in pairs.pair.values], textposition="top center", showlegend=False), row=1, col=col)
    fig.update_yaxes(title_text="mean normalised score of the pair merged alone", row=1, col=1)
    fig.update_layout(title=title, height=400)
    return fig
