"""The standard multi-task comparison Δm% against single-task baselines."""

from __future__ import annotations

import xarray as xr

__all__ = ["delta_m"]


def delta_m(metric: xr.DataArray, single_task: xr.DataArray, higher_is_better: xr.DataArray) -> xr.DataArray:
    """``Δm% = (1/T) Σ_t (−1)^{h_t} (M_t − M_t^single) / M_t^single × 100`` over the ``task`` dim.

    ``h_t = 1`` where higher is better, so a negative Δm% is better than single-task training. All
    three arrays carry a ``task`` dim; other dims (``method``, ``seed``) broadcast.
    """
    if set(metric.task.values) != set(single_task.task.values):
        raise ValueError(f"tasks differ: metric has {list(metric.task.values)}, baselines {list(single_task.task.values)}")
    if (single_task == 0).any():
        raise ValueError("a single-task metric is zero; Δm% divides by it")
    sign = xr.where(higher_is_better, -1.0, 1.0)
    return (sign * (metric - single_task) / single_task).mean("task") * 100
