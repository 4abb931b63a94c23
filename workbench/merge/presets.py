"""Weight averaging, task arithmetic, TIES, DARE and DARE-TIES: presets of the generalised merge, read no data.

Each preset is the options of its paper for :func:`~workbench.merge.arithmetic.merge_task_vectors`
(the definitions are in :mod:`workbench.merge.arithmetic`), written as a function from the preset's
own options to :class:`~workbench.merge.arithmetic.MergeOptions`; :func:`as_merge` makes it a
registered merge, and :func:`preset_options` gives the core's options of any preset. ``weights``
scales each task's vector (one weight per task, or per task and tensor). With τ_t = θ_t − θ_0:

- ``average``: θ = mean_t θ_t (Wortsman et al. 2022, model soups); the base only names the tensors;
- ``task_arithmetic``: θ = θ_0 + λ Σ_t τ_t, λ = 0.3 as in FusionBench and AdaMerging (Ilharco et al. 2023);
- ``ties``: trim each τ_t to its top ``density`` by magnitude over the whole model, elect the sign per
  coordinate, take the disjoint mean; λ = 1 (Yadav et al. 2023);
- ``dare``: drop each entry of τ_t with probability ``drop`` and rescale the rest by 1/(1 − p), then
  task arithmetic with λ = 0.3 (Yu et al. 2024);
- ``dare_ties``: DARE, then sign election and the disjoint sum with λ = 0.3 (FusionBench's setting).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.merge.method import MergeData, Merged, TaskModel, merge_signature
from workbench.merge.registry import MERGES
from workbench.weights.state_dicts import Weights

__all__ = ["as_merge", "preset_options", "average", "task_arithmetic", "ties", "dare", "dare_ties"]

Weighting = Sequence[float] | Mapping[str, Sequence[float]] | None


def as_merge(options_of: Callable[..., MergeOptions], uses_base: bool = True) -> Callable[..., Merged]:
    """The registered merge that runs the generalised core with ``options_of(**options)``; its signature is the
    merges' fixed arguments and then ``options_of``'s (what the registry reads as its options)."""

    def merge(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool, **options: Any) -> Merged:
        weights = {task: model.weights for task, model in tasks.items()}
        return Merged(weights=merge_task_vectors(base if uses_base else None, weights, options_of(**options), strict=strict, progress=progress))

    merge.__signature__ = merge_signature(inspect.signature(options_of).parameters.values())
    merge.__name__, merge.__doc__, merge.options_of = options_of.__name__, options_of.__doc__, options_of
    return merge


def _average(weights: Weighting = None) -> MergeOptions:
    """θ = Σ_t w_t θ_t / Σ_t w_t (the plain mean by default)."""
    return MergeOptions(weights=weights, combine="mean")


def _task_arithmetic(lam: float = 0.3, weights: Weighting = None) -> MergeOptions:
    """θ = θ_0 + λ Σ_t w_t τ_t."""
    return MergeOptions(lam=lam, weights=weights)


def _ties(
    lam: float = 1.0, density: float = 0.2, trim: Literal["tensor", "model"] = "model", combine: Literal["sum", "mean"] = "mean", weights: Weighting = None
) -> MergeOptions:
    """Trim to the top ``density`` (over the model, or per tensor as mergekit), elect signs, combine the agreeing entries; θ = θ_0 + λ · merged."""
    return MergeOptions(lam=lam, density=density, trim=trim, elect_sign=True, combine=combine, weights=weights)


def _dare(lam: float = 0.3, drop: float = 0.5, rescale: Literal["inverse", "l1"] = "inverse", seed: int = 0, weights: Weighting = None) -> MergeOptions:
    """Drop and rescale each τ_t (seeded per tensor and task), then task arithmetic."""
    return MergeOptions(lam=lam, drop=drop, rescale=rescale, seed=seed, weights=weights)


def _dare_ties(
    lam: float = 0.3, drop: float = 0.5, rescale: Literal["inverse", "l1"] = "inverse", combine: Literal["sum", "mean"] = "sum", seed: int = 0,
    weights: Weighting = None,
) -> MergeOptions:
    """DARE's dropping, then TIES' sign election and the disjoint sum (or mean)."""
    return MergeOptions(lam=lam, drop=drop, rescale=rescale, elect_sign=True, combine=combine, seed=seed, weights=weights)


average = as_merge(_average, uses_base=False)
task_arithmetic = as_merge(_task_arithmetic)
ties = as_merge(_ties)
dare = as_merge(_dare)
dare_ties = as_merge(_dare_ties)


def preset_options(name: str, **options: Any) -> MergeOptions:
    """The generalised merge's options that the registered preset ``name`` runs with ``options`` (checked as ``make_merge`` checks them)."""
    entry, resolved = MERGES.resolve(name, options)
    options_of = getattr(entry.target(), "options_of", None)
    if options_of is None:
        raise ValueError(f"merge {name!r} is not a preset of the generalised merge; the presets are {[n for n in MERGES if hasattr(MERGES[n].target(), 'options_of')]}")
    return options_of(**resolved)
