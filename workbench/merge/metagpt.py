"""MetaGPT's data-free coefficients (Zhou et al. 2024, MetaGPT: merging large language models using model exclusive task
arithmetic): task arithmetic with one coefficient per task, closed-form from the task vectors' norms.

With task vectors τ_m = θ_m − θ_0 over every merged tensor of the model (one vector per task)::

    λ_m = ‖τ_m‖² / Σ_k ‖τ_k‖²,    θ = θ_0 + Σ_m λ_m τ_m

(the coefficients sum to 1; a task that moved further from θ_0 weighs more). The paper derives λ_m from local linearity
and the task vectors' orthogonality; the norms are whole-model ones, as the implementation the references read has it.
``details`` holds λ_m. Two passes over the weights: the norms, then the generalised core's weighted sum.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import xarray as xr

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.merge.method import MergeData, Merged, TaskModel
from workbench.merge.streaming import open_inputs
from workbench.weights.state_dicts import Weights
from workbench.weights.task_vectors import task_vectors

__all__ = ["metagpt", "metagpt_coefficients"]


def metagpt_coefficients(base: Weights, tasks: Mapping[str, Weights], strict: bool = True) -> torch.Tensor:
    """λ_m ``(T,)`` float64 of the task models ``tasks`` around ``base`` (see the module docstring); 1/T each where
    every task vector is 0."""
    inputs = open_inputs(base, tasks, strict)
    squares = torch.zeros(len(inputs.names), dtype=torch.float64)
    for p in inputs.plans:
        if p.action == "merge":
            tau = task_vectors(inputs.base[p.name], inputs.tensors_of(p.name))
            squares += tau.double().square().reshape(len(squares), -1).sum(1)
    total = float(squares.sum())
    return squares / total if total > 0 else torch.full_like(squares, 1 / len(squares))


def metagpt(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool) -> Merged:
    """θ_0 + Σ_m λ_m τ_m with MetaGPT's λ_m (see the module docstring)."""
    weights = {task: model.weights for task, model in tasks.items()}
    coefficients = metagpt_coefficients(base, weights, strict)
    merged = merge_task_vectors(base, weights, MergeOptions(weights=coefficients.tolist()), strict=strict, progress=progress)
    return Merged(weights=merged, details=xr.Dataset({"lambda": ("task", coefficients.numpy())}, coords={"task": list(tasks)}))
