"""Plotly figure of LoraHub's leave-one-task-out study (:func:`workbench.studies.composition.lorahub_study`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

__all__ = ["lorahub_figure"]


def lorahub_figure(study: xr.Dataset) -> go.Figure:
    """Left: each left-out task's test metric under each composition (mean over seeds, error bars one standard
    deviation). Right: LoraHub's weight of each source LoRA (columns) for each left-out task (rows), mean over seeds."""
    tasks = [str(t) for t in study.task.values]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.14,
                        subplot_titles=("test metric of the left-out task", "LoraHub's weight of each source's LoRA"))
    spread = study.metric.std("seed", ddof=1) if study.sizes["seed"] > 1 else study.metric.std("seed")
    for composition in study.composition.values:
        fig.add_trace(go.Bar(name=str(composition), x=tasks, y=study.metric.sel(composition=composition).mean("seed").values,
                             error_y=dict(type="data", array=spread.sel(composition=composition).values),
                             hovertemplate=f"%{{x}} by {composition}: %{{y:.4f}}<extra></extra>"), row=1, col=1)
    weights = study.weights.mean("seed").values
    fig.add_trace(go.Heatmap(z=weights, x=[str(s) for s in study.source.values], y=tasks, zmid=0, colorscale="RdBu", showscale=False,
                             text=np.where(np.isnan(weights), "", np.round(weights, 2).astype(str)), texttemplate="%{text}",
                             hovertemplate="%{y} from %{x}'s LoRA: w = %{z:.2f}<extra></extra>"), row=1, col=2)
    metrics = ", ".join(dict.fromkeys(str(m) for m in study.metric_name.values))
    fig.update_yaxes(title_text=f"{metrics} (see each task's direction)", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_layout(barmode="group", height=430, title=f"LoraHub: each task composed from the others' LoRAs on {study.attrs['shots']} examples "
                                                          f"({study.sizes['seed']} seeds)")
    return fig
