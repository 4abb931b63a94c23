"""Plotly figures of task saliency: attribution pictures, task shares, saliency during training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

__all__ = ["attribution_grid", "share_maps", "token_attribution", "saliency_over_training", "representation_vs_parameter_figure", "attribution_validity_figure"]

_DIVERGING = "RdBu"


def attribution_grid(result: xr.Dataset, images: np.ndarray, examples: Sequence[int]) -> go.Figure:
    """The examples' images (top row) and each task's gradient × input on them (a row per task).

    ``result`` is :func:`~workbench.probes.input_attribution`'s, its ``attribution``
    ``(task, sample, input_channel, row, column)``; ``images`` ``(N, 1, H, W)``. Blue raises the task's
    loss where the pixel is brighter, red lowers it; one colour scale per row.
    """
    attribution = result.attribution
    tasks = [str(t) for t in attribution.task.values]
    fig = make_subplots(rows=len(tasks) + 1, cols=len(examples), row_titles=["input", *tasks], horizontal_spacing=0.01, vertical_spacing=0.02)
    for col, sample in enumerate(examples, start=1):
        fig.add_trace(go.Heatmap(z=images[sample, 0][::-1], colorscale="Greys", reversescale=True, showscale=False), row=1, col=col)
    for row, task in enumerate(tasks, start=2):
        values = attribution.sel(task=task).isel(sample=list(examples)).sum("input_channel").values
        limit = float(np.abs(values).max()) or 1.0
        for col in range(len(examples)):
            fig.add_trace(go.Heatmap(z=values[col][::-1], zmin=-limit, zmax=limit, colorscale=_DIVERGING, showscale=False), row=row, col=col + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, scaleanchor="x")
    fig.update_layout(title="Gradient × input of each task's loss on digit examples", height=110 * (len(tasks) + 1) + 80)
    return fig


def share_maps(share: xr.DataArray) -> go.Figure:
    """Each task's mean share of the saliency at every position of a spatial representation ``(task, sample, height, width)``."""
    tasks = [str(t) for t in share.task.values]
    mean = share.mean("sample")
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, horizontal_spacing=0.03)
    for col, task in enumerate(tasks, start=1):
        fig.add_trace(go.Heatmap(z=mean.sel(task=task).values[::-1], zmin=0, zmax=1, colorscale="Viridis", showscale=col == len(tasks)), row=1, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title="Each task's share of the representation's saliency, per position (mean over samples; 1/T is an even split)", height=300)
    return fig


def token_attribution(result: xr.Dataset, tokens: Sequence[Sequence[str]], words: Sequence[str]) -> go.Figure:
    """Word-piece attribution per task: a heatmap per task, a row per word, its tokens as the cell text.

    ``result`` is :func:`~workbench.probes.input_attribution`'s, its ``attribution`` ``(task, sample,
    token)``; ``tokens[s]`` are the word pieces of sample ``s``.
    """
    attribution = result.attribution
    tasks = [str(t) for t in attribution.task.values]
    width = attribution.sizes["token"]
    text = [list(pieces) + [""] * (width - len(pieces)) for pieces in tokens]
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, horizontal_spacing=0.04)
    for col, task in enumerate(tasks, start=1):
        values = attribution.sel(task=task).values
        limit = float(np.abs(values).max()) or 1.0
        fig.add_trace(
            go.Heatmap(z=values[::-1], text=text[::-1], texttemplate="%{text}", zmin=-limit, zmax=limit, colorscale=_DIVERGING, showscale=False, y=list(words)[::-1]),
            row=1, col=col,
        )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=True, row=1, col=1)
    fig.update_layout(title="Gradient × input per word piece ([CLS] first), per task", height=40 * len(words) + 150)
    return fig


def saliency_over_training(history: xr.Dataset) -> go.Figure:
    """The task-share entropy (over ``log T``) and the share of samples whose task saliencies conflict, over training."""
    from workbench.probes.conflict import upper_pairs

    fig = make_subplots(rows=1, cols=2, subplot_titles=["task-share entropy / log T", "samples with conflicting saliency, per pair"])
    fig.add_trace(go.Scatter(x=history.step.values, y=history.entropy.values, mode="lines+markers", name="entropy"), row=1, col=1)
    frequency = upper_pairs(history.conflict_frequency)
    for pair in frequency.pair.values:
        fig.add_trace(go.Scatter(x=history.step.values, y=frequency.sel(pair=pair).values, mode="lines", name=str(pair)), row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(title="Task saliency during training (held-out batch)", height=380)
    return fig


def representation_vs_parameter_figure(comparison: xr.Dataset) -> go.Figure:
    """Pairwise saliency cosine against parameter-gradient cosine (every pair and step), and their rank correlation over steps."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["every pair at every recorded step", "Spearman over the pairs"])
    steps = np.repeat(comparison.step.values[:, None], comparison.sizes["pair"], axis=1)
    labels = np.tile(comparison.pair.values[None, :], (comparison.sizes["step"], 1))
    fig.add_trace(
        go.Scatter(
            x=comparison.parameter.values.ravel(), y=comparison.representation.values.ravel(), mode="markers", text=[f"{p}, step {s}" for p, s in zip(labels.ravel(), steps.ravel())],
            marker=dict(color=steps.ravel(), colorscale="Viridis", colorbar=dict(title="step", x=0.45)), name="pairs",
        ),
        row=1, col=1,
    )
    fig.add_trace(go.Scatter(x=comparison.step.values, y=comparison.spearman.values, mode="lines+markers", name="Spearman"), row=1, col=2)
    fig.update_xaxes(title_text="parameter-gradient cosine", row=1, col=1)
    fig.update_yaxes(title_text="mean per-sample saliency cosine", row=1, col=1)
    fig.update_xaxes(title_text="step", row=1, col=2)
    fig.update_yaxes(range=[-1, 1], row=1, col=2)
    fig.update_layout(title="Representation-level against parameter-level conflict", height=420, showlegend=False)
    return fig


def attribution_validity_figure(study: xr.Dataset) -> go.Figure:
    """Every task of every random sparse problem: support recall and Spearman of its attribution with the planted weights."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["support recall", "Spearman with |planted weight|"])
    for col, name in enumerate(("support_recall", "spearman"), start=1):
        values = study[name].values
        configuration = np.repeat(study.configuration.values[:, None], values.shape[1], axis=1)
        keep = np.isfinite(values)
        fig.add_trace(go.Box(y=values[keep], boxpoints="all", jitter=0.4, pointpos=0, text=[f"configuration {c}" for c in configuration[keep]], name=name), row=1, col=col)
    fig.update_layout(title=f"Does input attribution find the features each task reads? {study.sizes['configuration']} random sparse problems", height=400, showlegend=False)
    return fig
