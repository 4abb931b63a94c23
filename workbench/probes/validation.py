"""Checks of a probe against ground truth: does the measured pairwise structure follow the planted one?"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

from workbench.probes.conflict import upper_pairs

__all__ = ["pairwise_rank_correlation"]


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
