"""Weight averaging, task arithmetic, TIES, DARE and DARE-TIES: presets of the generalised merge, read no data.

Each is :func:`~workbench.merge.arithmetic.merge_task_vectors` with the options of its paper (the
definitions are in :mod:`workbench.merge.arithmetic`); ``weights`` scales each task's vector (one
weight per task, or per task and tensor). With τ_t = θ_t − θ_0:

- ``average``: θ = mean_t θ_t (Wortsman et al. 2022, model soups);
- ``task_arithmetic``: θ = θ_0 + λ Σ_t τ_t, λ = 0.3 as in FusionBench and AdaMerging (Ilharco et al. 2023);
- ``ties``: trim each τ_t to its top ``density`` by magnitude over the whole model, elect the sign per
  coordinate, take the disjoint mean; λ = 1 (Yadav et al. 2023);
- ``dare``: drop each entry of τ_t with probability ``drop`` and rescale the rest by 1/(1 − p), then
  task arithmetic with λ = 0.3 (Yu et al. 2024);
- ``dare_ties``: DARE, then sign election and the disjoint sum with λ = 0.3 (FusionBench's setting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.merge.method import MergeData, Merged, TaskModel
from workbench.weights.state_dicts import Weights

__all__ = ["average", "task_arithmetic", "ties", "dare", "dare_ties"]

Weighting = Sequence[float] | Mapping[str, Sequence[float]] | None


def _merged(base: Weights | None, tasks: Mapping[str, TaskModel], options: MergeOptions, strict: bool, progress: bool) -> Merged:
    weights = merge_task_vectors(base, {task: model.weights for task, model in tasks.items()}, options, strict=strict, progress=progress)
    return Merged(weights=weights)


def average(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool, weights: Weighting = None) -> Merged:
    """θ = Σ_t w_t θ_t / Σ_t w_t (the plain mean by default); the base only names the tensors."""
    return _merged(None, tasks, MergeOptions(weights=weights, combine="mean"), strict, progress)


def task_arithmetic(
    base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool, lam: float = 0.3, weights: Weighting = None
) -> Merged:
    """θ = θ_0 + λ Σ_t w_t τ_t."""
    return _merged(base, tasks, MergeOptions(lam=lam, weights=weights), strict, progress)


def ties(
    base: Weights,
    tasks: Mapping[str, TaskModel],
    data: MergeData | None,
    *,
    strict: bool,
    progress: bool,
    lam: float = 1.0,
    density: float = 0.2,
    trim: Literal["tensor", "model"] = "model",
    combine: Literal["sum", "mean"] = "mean",
    weights: Weighting = None,
) -> Merged:
    """Trim to the top ``density`` (over the model, or per tensor as mergekit), elect signs, combine the agreeing entries; θ = θ_0 + λ · merged."""
    return _merged(base, tasks, MergeOptions(lam=lam, density=density, trim=trim, elect_sign=True, combine=combine, weights=weights), strict, progress)


def dare(
    base: Weights,
    tasks: Mapping[str, TaskModel],
    data: MergeData | None,
    *,
    strict: bool,
    progress: bool,
    lam: float = 0.3,
    drop: float = 0.5,
    rescale: Literal["inverse", "l1"] = "inverse",
    seed: int = 0,
    weights: Weighting = None,
) -> Merged:
    """Drop and rescale each τ_t (seeded per tensor and task), then task arithmetic."""
    return _merged(base, tasks, MergeOptions(lam=lam, drop=drop, rescale=rescale, seed=seed, weights=weights), strict, progress)


def dare_ties(
    base: Weights,
    tasks: Mapping[str, TaskModel],
    data: MergeData | None,
    *,
    strict: bool,
    progress: bool,
    lam: float = 0.3,
    drop: float = 0.5,
    rescale: Literal["inverse", "l1"] = "inverse",
    combine: Literal["sum", "mean"] = "sum",
    seed: int = 0,
    weights: Weighting = None,
) -> Merged:
    """DARE's dropping, then TIES' sign election and the disjoint sum (or mean)."""
    options = MergeOptions(lam=lam, drop=drop, rescale=rescale, elect_sign=True, combine=combine, seed=seed, weights=weights)
    return _merged(base, tasks, options, strict, progress)
