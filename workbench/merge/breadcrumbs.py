"""Model Breadcrumbs (Davari & Belilovsky 2024, as mergekit 0.1.5 merges it): each task vector loses its largest
entries as outliers and its smallest as noise, then task arithmetic, or TIES' sign election (``breadcrumbs_ties``).

Per tensor of ``n`` entries and task vector τ_m = θ_m − θ_0: with ``k = ⌊density · n⌋`` and ``top = ⌊γ n⌋``, the entries
are sorted by magnitude (ascending) and those at places ``b … b + k − 1`` kept, ``b = max(0, n − k − top)``: the
``top`` largest are dropped as outliers unless that would leave fewer than ``k``, the rest of the smallest as noise;
the others become 0 (no rescaling). Then, with weights ``w_m``, the generalised core's step
(:func:`~workbench.merge.arithmetic.combine_task_vectors`): the sum ``Σ_m w_m τ̂_m`` (``breadcrumbs``), or the sum of
the entries whose sign is that of ``Σ_m w_m τ̂_m`` (``breadcrumbs_ties``), neither normalised as mergekit's defaults
have it; θ = θ_0 + λ · merged. ``density = 1`` keeps every entry. (mergekit's older code kept nothing where
``⌊γ n⌋ = 0``; 0.1.5, the oracle, keeps the top ``k`` there.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from workbench.merge.arithmetic import MergeOptions, apply_combined
from workbench.merge.tensor_wise import as_tensor_merge
from workbench.weights.task_vectors import sorted_places, sorts_by_bits

__all__ = ["breadcrumbs", "breadcrumbs_ties", "breadcrumbs_merge", "breadcrumbs_ties_merge", "breadcrumbs_mask"]


def breadcrumbs_mask(tau: Tensor, density: float, gamma: float) -> Tensor:
    """1 where a task vector ``tau`` (any shape) keeps its entry, 0 elsewhere (see the module docstring); ``tau``'s shape.

    The kept places of the ascending order are those whose magnitude lies between the ``(b + 1)``-th and the
    ``(b + k)``-th smallest, found by selections, not a sort (on CPU from a sampled bracket of each,
    :func:`~workbench.weights.task_vectors.sorted_places`); magnitudes tied at either end are kept together."""
    if density >= 1:
        return torch.ones_like(tau)
    n = tau.numel()
    keep, top = int(density * n), int(gamma * n)
    if keep == 0:
        return torch.zeros_like(tau)
    bottom = max(0, n - keep - top)
    magnitude = tau.abs().reshape(-1)
    low, high = _sorted_places(magnitude, bottom, bottom + keep - 1)
    return ((magnitude >= low) & (magnitude <= high)).to(tau.dtype).reshape(tau.shape)


def _sorted_places(magnitude: Tensor, first: int, last: int) -> tuple[Tensor, Tensor]:
    """The entries of 0-based places ``first`` and ``last`` of the ascending order of the 1-D ``magnitude``."""
    if not sorts_by_bits(magnitude):
        return magnitude.kthvalue(first + 1).values, magnitude.kthvalue(last + 1).values
    low, high = sorted_places(magnitude, [first, last])
    return low, high


def _check(density: float, gamma: float) -> None:
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")


def _merge(base: Tensor, tensors: Tensor, density: float, gamma: float, lam: float, weights: Sequence[float] | None, elect_sign: bool) -> Tensor:
    _check(density, gamma)
    tau = tensors.sub_(base).reshape(tensors.shape[0], -1)  # the stacked inputs are the rule's to change
    for row in tau:
        row.mul_(breadcrumbs_mask(row, density, gamma))
    return apply_combined(base, tau, weights, lam, MergeOptions(elect_sign=elect_sign, combine="sum"))


def breadcrumbs(base: Tensor, tensors: Tensor, density: float = 0.9, gamma: float = 0.01, lam: float = 1.0, weights: Sequence[float] | None = None) -> Tensor:
    """Breadcrumbs of the base ``(*shape)`` and the models ``tensors`` ``(T, *shape)``, summed (see the module docstring)."""
    return _merge(base, tensors, density, gamma, lam, weights, elect_sign=False)


def breadcrumbs_ties(base: Tensor, tensors: Tensor, density: float = 0.9, gamma: float = 0.01, lam: float = 1.0, weights: Sequence[float] | None = None) -> Tensor:
    """Breadcrumbs with TIES' sign election, the agreeing entries summed (see the module docstring)."""
    return _merge(base, tensors, density, gamma, lam, weights, elect_sign=True)


breadcrumbs_merge = as_tensor_merge(breadcrumbs)
breadcrumbs_ties_merge = as_tensor_merge(breadcrumbs_ties)
