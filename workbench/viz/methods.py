"""Plotly figures of a method comparison (:func:`workbench.studies.methods.compare_methods`)."""

from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr

from workbench.train.registry import METHODS

__all__ = ["delta_m_bars", "learning_curves", "tradeoff", "conflict_bars", "cost_bars"]

_FAMILY_COLOURS = {"loss weighting": "#4c78a8", "gradient aggregation": "#f58518", "workbench": "#54a24b"}


def _family(label: str, comparison: xr.Dataset) -> str:
    name = comparison.attrs.get("methods", {}).get(label, {}).get("name", label)
    return METHODS[name].family if name in METHODS else "workbench"


def _ordered(comparison: xr.Dataset, split: str) -> list[str]:
    return list(comparison.delta_m.sel(split=split).mean("seed").to_series().sort_values().index)


def delta_m_bars(comparison: xr.Dataset, split: str = "test") -> go.Figure:
    """Δm% per method (mean over seeds, error bars one standard deviation), best first, coloured by family."""
    order = _ordered(comparison, split)
    values = comparison.delta_m.sel({"split": split, "method": order})
    spread = values.std("seed", ddof=1) if comparison.sizes["seed"] > 1 else values.std("seed")
    colours = [_FAMILY_COLOURS[_family(m, comparison)] for m in order]
    fig = go.Figure(go.Bar(
        x=order, y=values.mean("seed").values, error_y=dict(type="data", array=spread.values), marker_color=colours,
        hovertemplate="%{x}: Δm = %{y:.2f}%<extra></extra>",
    ))
    fig.add_hline(y=0, line_color="grey", line_dash="dot")
    fig.update_layout(
        title=f"Δm% against single-task training on the {split} split ({comparison.sizes['seed']} seeds; lower is better)",
        yaxis_title="Δm %", xaxis_title="method (blue: loss weighting, orange: gradient aggregation, green: the workbench's own)",
    )
    return fig


def learning_curves(comparison: xr.Dataset, task: str) -> go.Figure:
    """The validation metric of ``task`` during training, one line per method (mean over seeds)."""
    curves = comparison.curve.sel(task=task).mean("seed")
    fig = go.Figure([
        go.Scatter(x=curves.eval_step.values, y=curves.sel({"method": m}).values, mode="lines", name=str(m))
        for m in comparison.method.values
    ])
    metric = str(comparison.metric_name.sel(task=task).values)
    fig.update_layout(title=f"Validation {metric} of {task} during training", xaxis_title="step", yaxis_title=metric)
    return fig


def tradeoff(comparison: xr.Dataset, tasks: tuple[str, str] | None = None, split: str = "test") -> go.Figure:
    """Each method's pair of test metrics for two tasks (mean over seeds, error bars one std), with the single-task point."""
    first, second = tasks or tuple(comparison.task.values[:2])
    chosen = comparison.metric.sel(split=split)
    mean, spread = chosen.mean("seed"), chosen.std("seed")
    fig = go.Figure()
    for method in comparison.method.values:
        fig.add_trace(go.Scatter(
            x=[float(mean.sel({"method": method, "task": first}))], y=[float(mean.sel({"method": method, "task": second}))],
            error_x=dict(type="data", array=[float(spread.sel({"method": method, "task": first}))]),
            error_y=dict(type="data", array=[float(spread.sel({"method": method, "task": second}))]),
            mode="markers+text", text=[str(method)], textposition="top center", name=str(method),
            marker=dict(color=_FAMILY_COLOURS[_family(str(method), comparison)], size=9),
        ))
    single = comparison.single_task.sel(split=split).mean("seed")
    fig.add_trace(go.Scatter(
        x=[float(single.sel(task=first))], y=[float(single.sel(task=second))], mode="markers+text", text=["single-task"],
        textposition="bottom center", name="single-task", marker=dict(symbol="star", size=16, color="black"),
    ))
    names = {t: str(comparison.metric_name.sel(task=t).values) for t in (first, second)}
    fig.update_layout(
        title=f"The trade-off between {first} and {second} ({split} split)", showlegend=False,
        xaxis_title=f"{first} {names[first]}", yaxis_title=f"{second} {names[second]}",
    )
    return fig


def conflict_bars(comparison: xr.Dataset) -> go.Figure:
    """How often the tasks' gradients conflicted during training with each method (mean over pairs and seeds)."""
    tasks = list(comparison.task.values)
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
    per_pair = xr.concat([comparison.conflict.sel(task=a, other_task=b, drop=True) for a, b in pairs], dim="pair")
    order = _ordered(comparison, "test")
    values = per_pair.mean(("pair", "seed")).sel({"method": order})
    fig = go.Figure(go.Bar(x=order, y=values.values, marker_color=[_FAMILY_COLOURS[_family(m, comparison)] for m in order]))
    fig.update_layout(
        title="Conflict frequency during training: recorded steps with a negative gradient cosine (methods ordered by Δm%)",
        yaxis_title="fraction of steps", yaxis_range=[0, 1],
    )
    return fig


def cost_bars(comparison: xr.Dataset, unit: str) -> go.Figure:
    """Seconds per training step of each method relative to the method ``unit`` (log scale)."""
    seconds = comparison.seconds_per_step.mean("seed")
    relative = (seconds / seconds.sel({"method": unit})).sortby(seconds)
    fig = go.Figure(go.Bar(
        x=[str(m) for m in relative.method.values], y=relative.values,
        marker_color=[_FAMILY_COLOURS[_family(str(m), comparison)] for m in relative.method.values],
        customdata=(seconds.sel({"method": relative.method}) * 1e3).values, hovertemplate="%{x}: %{y:.2f}× (%{customdata:.1f} ms)<extra></extra>",
    ))
    fig.update_layout(title=f"Seconds per training step relative to {unit}", yaxis_title=f"× {unit}", yaxis_type="log")
    return fig
