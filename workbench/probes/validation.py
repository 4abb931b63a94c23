"""Checks of a probe against ground truth: does the measured pairwise structure follow the planted one?"""

from __future__ import annotations

import numpy as np
import xarray as xr

from workbench.probes.conflict import upper_pairs

__all__ = ["rank_correlation", "pairwise_rank_correlation", "rank_correlation_over_training", "report_card", "with_seed_summary", "attribution_recovery"]


def pairwise_rank_correlation(truth: xr.DataArray, measured: xr.DataArray) -> float:
    """Spearman correlation between two ``(task, other_task)`` arrays over their pairs ``i < j``.

    Pairs where either value is NaN are left out; NaN when fewer than three pairs remain or either
    side is constant.
    """
    if set(truth.task.values) != set(measured.task.values):
        raise ValueError(f"task labels differ: {list(truth.task.values)} vs {list(measured.task.values)}")
    return rank_correlation(upper_pairs(truth).values, upper_pairs(measured.sel(task=truth.task, other_task=truth.other_task)).values)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two equally long arrays, NaN pairs left out; NaN when fewer than three
    pairs remain or either side is constant (where a rank correlation says nothing)."""
    from scipy.stats import spearmanr  # imported here: scipy.stats costs half a second, and the training loop imports the probes

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
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


def _directed_pairs(da: xr.DataArray, tasks: list[str]) -> np.ndarray:
    """The off-diagonal entries of a ``(source, target)`` array, in a fixed order."""
    values = da.sel(source=tasks, target=tasks).values
    return values[~np.eye(len(tasks), dtype=bool)]


def report_card(affinity: xr.DataArray, truth: xr.DataArray, top_k: int = 3) -> xr.Dataset:
    """How well a directed affinity predicts a directed truth (measured ``gain``): per seed and summarised.

    ``affinity`` and ``truth`` are ``(source, target)`` arrays, either may carry a ``seed`` dim
    (paired when both do). Over the off-diagonal pairs, per seed: the Spearman and Pearson
    correlations and the top-k agreement (the share of the truth's ``top_k`` pairs that are among the
    affinity's ``top_k``). Returns those over ``seed`` and their ``*_mean`` and ``*_std``.
    """
    from scipy.stats import pearsonr

    tasks = [str(t) for t in truth.source.values]
    seeds = truth.seed.values if "seed" in truth.dims else affinity.seed.values if "seed" in affinity.dims else [0]
    rows = {"spearman": [], "pearson": [], "top_k": []}
    for seed in seeds:
        predicted = _directed_pairs(affinity.sel(seed=seed) if "seed" in affinity.dims else affinity, tasks)
        actual = _directed_pairs(truth.sel(seed=seed) if "seed" in truth.dims else truth, tasks)
        keep = ~(np.isnan(predicted) | np.isnan(actual))
        predicted, actual = predicted[keep], actual[keep]
        constant = len(actual) < 3 or np.ptp(actual) == 0 or np.ptp(predicted) == 0
        rows["spearman"].append(rank_correlation(predicted, actual))
        rows["pearson"].append(np.nan if constant else float(pearsonr(predicted, actual).statistic))
        k = min(top_k, len(actual))
        rows["top_k"].append(len(set(np.argsort(-predicted)[:k]) & set(np.argsort(-actual)[:k])) / k if k else np.nan)
    ds = with_seed_summary(xr.Dataset({name: ("seed", values) for name, values in rows.items()}, coords={"seed": list(seeds)}))
    ds.attrs.update(top_k=top_k, pairs=len(tasks) * (len(tasks) - 1))
    return ds


def with_seed_summary(card: xr.Dataset) -> xr.Dataset:
    """``card`` with ``*_mean`` and ``*_std`` (over ``seed``, NaN skipped) of each per-seed score."""
    names = [name for name, variable in card.data_vars.items() if variable.dims == ("seed",)]
    ddof = 1 if card.sizes["seed"] > 1 else 0
    return card.assign({f"{n}_mean": card[n].mean() for n in names} | {f"{n}_std": card[n].std(ddof=ddof) for n in names})


def attribution_recovery(attribution: xr.DataArray, weights: xr.DataArray) -> xr.Dataset:
    """How well per-task input attribution finds the features each task reads, against true ``weights``.

    ``attribution`` is ``(task, sample, feature)`` (from
    :func:`~workbench.probes.saliency.input_attribution` on vector inputs), ``weights`` ``(task,
    feature)``. Per task, with the importance of a feature the mean ``|attribution|`` over samples:
    ``spearman`` with ``|weights|`` and ``support_recall``, the share of the features the task reads
    (non-zero weights) among its ``k`` most important, ``k`` the number it reads; and the
    ``importance`` itself ``(task, feature)``. A read feature with a tiny weight is hardly read: the
    recall counts it all the same.
    """
    from scipy.stats import spearmanr  # see rank_correlation

    importance = np.abs(attribution.values).mean(1)
    truth = np.abs(weights.sel(task=attribution.task).values)
    rows = {"spearman": [], "support_recall": []}
    for found, true in zip(importance, truth):
        support = np.flatnonzero(true)
        rows["spearman"].append(float(spearmanr(found, true).statistic))
        top = np.argsort(-found)[: len(support)]
        rows["support_recall"].append(len(set(top) & set(support)) / len(support) if len(support) else np.nan)
    ds = xr.Dataset({k: ("task", v) for k, v in rows.items()}, coords={"task": attribution.task.values})
    return ds.assign(importance=(("task", "feature"), importance))
