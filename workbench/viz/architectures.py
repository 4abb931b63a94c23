"""Plotly figures of an architecture comparison (:func:`workbench.studies.compare_architectures`)."""

from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr

__all__ = ["architecture_bars", "architecture_costs"]


def _spread(values: xr.DataArray) -> xr.DataArray:
    return values.std("seed", ddof=1) if values.sizes["seed"] > 1 else values.std("seed")


def architecture_bars(comparison: xr.Dataset, split: str = "test") -> go.Figure:
    """Δm% per architecture (mean over seeds, error bars one standard deviation), one bar per method, architectures
    ordered by their best method's Δm%; the hover gives the trainable parameters."""
    delta = comparison.delta_m.sel(split=split)
    order = list(delta.mean("seed").min("method").to_series().sort_values().index)
    parameters = comparison.parameters.sel(architecture=order).values
    fig = go.Figure([
        go.Bar(
            name=str(method), x=order, y=delta.sel({"method": method, "architecture": order}).mean("seed").values,
            error_y=dict(type="data", array=_spread(delta.sel({"method": method, "architecture": order})).values), customdata=parameters,
            hovertemplate=f"%{{x}} with {method}: Δm = %{{y:.2f}}% (%{{customdata:,}} parameters)<extra></extra>",
        )
        for method in comparison.method.values
    ])
    fig.add_hline(y=0, line_color="grey", line_dash="dot")
    fig.update_layout(
        barmode="group", yaxis_title="Δm %", xaxis_title="architecture",
        title=f"Δm% of each architecture against hard sharing's single-task baselines, {split} split ({comparison.sizes['seed']} seeds; lower is better)",
    )
    return fig


def architecture_costs(comparison: xr.Dataset, method: str | None = None, split: str = "test") -> go.Figure:
    """Each architecture's Δm% under ``method`` (the first by default) against its milliseconds per training step
    (log scale), the marker's area growing with its trainable parameters."""
    method = str(comparison.method.values[0]) if method is None else method
    delta = comparison.delta_m.sel({"split": split, "method": method})
    milliseconds = comparison.seconds_per_step.sel({"method": method}).mean("seed") * 1e3
    parameters = comparison.parameters.values
    largest = max(int(parameters.max()), 1)
    names = [str(a) for a in comparison.architecture.values]
    fig = go.Figure(go.Scatter(
        x=milliseconds.values, y=delta.mean("seed").values, error_y=dict(type="data", array=_spread(delta).values), mode="markers+text",
        text=names, textposition="top center", customdata=parameters, marker=dict(size=[8 + 30 * (p / largest) ** 0.5 for p in parameters]),
        hovertemplate="%{text}: Δm = %{y:.2f}%, %{x:.2f} ms per step, %{customdata:,} parameters<extra></extra>",
    ))
    fig.update_layout(
        title=f"Δm% against the cost of a training step with {method} (marker area: trainable parameters)",
        xaxis_title="ms per training step", xaxis_type="log", yaxis_title="Δm % (lower is better)", showlegend=False,
    )
    return fig
