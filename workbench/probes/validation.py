"""Checks of a probe against ground truth: does the measured pairwise structure follow the planted one?"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

from workbench.probes.conflict import upper_pairs

__all__ = ["pairwise_rank_correlation", "rank_correlation_over_training"]


def pairwise_rank_correlation(truth: xr.DataArray, measured: xr.DataArray) -> float:
    """Spearman correlation between two ``(task, other_task)`` arrays over their pairs ``i < j``.

    Pairs where either value is NaN are left out; NaN when fewer than three pairs remain or either
    side is constant.
    """
    if set(truth.task.values) != set(measured.task.values):
        raise ValueError(f"task labels differ: {list(truth.task.values)} vs {list(measured.task.values)}")
    a = upper_pairs(truth).values
    b = upper_pairs(measured.sel(task=truth.task, other_task=truth.other_task)).values
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return float("nan")
    return float(spearmanr(a[keep], b[keep]).statistic)


def rank_correlation_over_training(truth: xr.DataArray, measured: xr.DataArray, window: int = 5) -> xr.DataArray:
    """:func:`pairwise_rank_correlation` of ``truth`` with ``measured`` ``(step, task, other_task)`` averaged over a sliding window.

    At each recorded step the measured pairs are averaged over the last ``window`` records (fewer
    at the start), so the curve shows when in training the probe agrees with the truth. Returns a
    DataArray over ``step``.
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of records, got {window}")
    smoothed = measured.rolling(step=window, min_periods=1).mean()
    values = [pairwise_rank_correlation(truth, smoothed.sel(step=step)) for step in smoothed.step.values]
    return xr.DataArray(values, dims="step", coords={"step": smoothed.step.values}, name="rank_correlation", attrs={"window": window})
