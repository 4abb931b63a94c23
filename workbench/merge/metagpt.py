"""MetaGPT's data-free coefficients (Zhou et al. 2024, MetaGPT: merging large language models using model exclusive task
arithmetic): task arithmetic with one coefficient per task, closed-form from the task vectors' norms.

With task vectors τ_m = θ_m − θ_0 over every merged tensor of the model (one vector per task)::

    λ_m = ‖τ_m‖² / Σ_k ‖τ_k‖²,    θ = θ_0 + Σ_m λ_m τ_m

(the coefficients sum to 1; a task that moved further from θ_0 weighs more). The paper derives λ_m from local linearity
and the task vectors' orthogonality; the norms are whole-model ones, as the implementation the references read has it.
``details`` holds λ_m. Two passes over the weights, each streamed: the norms, then the generalised core's weighted sum
(:func:`metagpt_streamed` writes it to a file or model folder as it is made).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import Tensor

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.merge.method import MergeData, Merged, TaskModel
from workbench.merge.streaming import open_inputs
from workbench.weights.state_dicts import Source, Weights
from workbench.weights.task_vectors import task_vector_chunks

__all__ = ["metagpt", "metagpt_coefficients", "metagpt_streamed"]


def metagpt_coefficients(base: Source | Weights, tasks: Mapping[str, Source | Weights], strict: bool = True) -> torch.Tensor:
    """λ_m ``(T,)`` float64 of the task models ``tasks`` around ``base`` (see the module docstring); 1/T each where
    every task vector is 0."""
    inputs = open_inputs(base, tasks, strict)
    squares = torch.zeros(len(inputs.names), dtype=torch.float64)
    for p in inputs.plans:
        if p.action == "merge":
            for _, _, _, tau in task_vector_chunks(inputs.base, inputs.checkpoints, p.name):
                squares += tau.double().square().sum(1)
    total = float(squares.sum())
    return squares / total if total > 0 else torch.full_like(squares, 1 / len(squares))


def metagpt_streamed(base: Source | Weights, models: Mapping[str, Source | Weights], *, strict: bool = True, **emit: Any) -> dict[str, Tensor] | Path:
    """MetaGPT over weights as they sit on disk: the norms in a first pass, then the core's weighted sum streamed
    (``emit``: :func:`~workbench.merge.arithmetic.merge_task_vectors`' ``out``, ``out_dtype``, ``like``,
    ``max_shard_bytes`` and ``progress``); what the core returns."""
    coefficients = metagpt_coefficients(base, models, strict)
    return merge_task_vectors(base, models, MergeOptions(weights=coefficients.tolist()), strict=strict, **emit)


def metagpt(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool) -> Merged:
    """θ_0 + Σ_m λ_m τ_m with MetaGPT's λ_m (see the module docstring)."""
    weights = {task: model.weights for task, model in tasks.items()}
    coefficients = metagpt_coefficients(base, weights, strict)
    merged = merge_task_vectors(base, weights, MergeOptions(weights=coefficients.tolist()), strict=strict, progress=progress)
    return Merged(weights=merged, details=xr.Dataset({"lambda": ("task", coefficients.numpy())}, coords={"task": list(tasks)}))


metagpt.streamed, metagpt.passes = metagpt_streamed, 2  # `workbench merge` runs it on model folders, reading them twice
