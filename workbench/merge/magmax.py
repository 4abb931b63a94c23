"""MagMax (Marczak et al. 2024, MagMax: leveraging model merging for seamless continual learning; as FusionBench 0.2.33
merges it): every entry takes the task vector of largest magnitude there.

Per tensor, with task vectors τ_m = θ_m − θ_0, ``m = 1 … T`` in order: τ_max[j] = τ_{m*(j)}[j] with
m*(j) = argmax_m |τ_m[j]|, a later task winning a tie (the official code folds with ``>=``); θ = θ_0 + λ τ_max.
λ = 0.5 is the official 8-task script's and FusionBench's default.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["magmax", "magmax_merge"]


def magmax(base: Tensor, tensors: Tensor, lam: float = 0.5) -> Tensor:
    """MagMax of the base ``(*shape)`` and the models ``tensors`` ``(T, *shape)`` (see the module docstring)."""
    tau = tensors.sub_(base)  # the stacked inputs are the rule's to change
    selected = tau[0]
    for candidate in tau[1:]:
        selected = torch.where(candidate.abs() >= selected.abs(), candidate, selected)
    return base + lam * selected


magmax_merge = as_tensor_merge(magmax)
