"""TALL masks (Wang et al. 2024): which coordinates of a merged model each task needs; per-task retrieval and Consensus merging.

With τ_t = θ_t − θ_0 and τ_MTL = θ_MTL − θ_0 (θ_MTL a merged model, e.g. task arithmetic with λ = 1):

- m_t = |τ_t| > λ_t · |τ_MTL − τ_t| (strict), per coordinate; λ_t chosen per task on validation data
  from {0.2, ..., 0.6} (:func:`choose_tall_lambdas`).
- Task t is served by θ_0 + m_t ⊙ τ_MTL (:func:`retrieve`).
- Consensus merging keeps the coordinates where Σ_t m_t ≥ k (default 2): θ_0 + 1[Σ_t m_t ≥ k] ⊙ τ_MTL
  (:func:`consensus_merge`).

Masks cover the merged (floating) tensors and are stored bit-packed: one bit per task and entry.
Every function reads its checkpoints one tensor at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from workbench.state_dicts import Source, open_checkpoint, open_checkpoints, plan, write_safetensors
from workbench.task_vectors import TaskMasks, task_vectors

__all__ = ["TaskMasks", "tall_masks", "choose_tall_lambdas", "retrieve", "consensus_merge"]

TALL_LAMBDAS = (0.2, 0.3, 0.4, 0.5, 0.6)


def _masked_plans(models, base: Source, merged: Source, strict: bool):
    names, tasks = open_checkpoints(models) if models is not None else ([], [])
    base_checkpoint, merged_checkpoint = open_checkpoint(base, "base"), open_checkpoint(merged, "merged")
    plans = plan([merged_checkpoint] + tasks, base_checkpoint, strict)
    return names, tasks, base_checkpoint, merged_checkpoint, plans


def tall_masks(
    models: Sequence[Source] | Mapping[str, Source],
    base: Source,
    merged: Source,
    lambdas: float | Sequence[float],
    strict: bool = True,
) -> TaskMasks:
    """m_t = |τ_t| > λ_t |τ_MTL − τ_t| for every merged tensor; ``lambdas`` is one λ for all tasks or one per task."""
    names, tasks, base_checkpoint, merged_checkpoint, plans = _masked_plans(models, base, merged, strict)
    lam = torch.as_tensor(lambdas, dtype=torch.float64).expand(len(tasks)) if np.ndim(lambdas) == 0 else torch.as_tensor(lambdas, dtype=torch.float64)
    if lam.shape != (len(tasks),):
        raise ValueError(f"{lam.numel()} values of λ for {len(tasks)} tasks")
    masks = {}
    for p in plans:
        if p.action != "merge":
            continue
        tau = task_vectors(base_checkpoint[p.name], [c[p.name] for c in tasks])
        tau_mtl = task_vectors(base_checkpoint[p.name], [merged_checkpoint[p.name]])
        masks[p.name] = tau.abs() > lam.to(tau.dtype).view(-1, *[1] * (tau.dim() - 1)) * (tau_mtl - tau).abs()
    return TaskMasks.pack(names, masks)


def _masked_model(base_checkpoint, merged_checkpoint, plans, keep: Callable[[str], Tensor], out) -> dict[str, Tensor] | Path:
    def tensors() -> Iterator[Tensor]:
        for p in plans:
            merged_tensor = merged_checkpoint[p.name]
            if p.action != "merge":
                yield merged_tensor
                continue
            theta0 = base_checkpoint[p.name]
            tau_mtl = task_vectors(theta0, [merged_tensor])[0]
            yield (theta0.to(tau_mtl.dtype) + keep(p.name) * tau_mtl).to(p.dtype)

    if out is None:
        return {p.name: tensor for p, tensor in zip(plans, tensors())}
    return write_safetensors(out, plans, tensors())


def retrieve(base: Source, merged: Source, masks: TaskMasks, task: str, out: str | os.PathLike | None = None) -> dict[str, Tensor] | Path:
    """Task ``task``'s model θ_0 + m_t ⊙ τ_MTL (other tensors as in ``merged``); a state dict, or written to ``out``."""
    if task not in masks.tasks:
        raise ValueError(f"no mask for task {task!r}; the masks are for {masks.tasks}")
    _, _, base_checkpoint, merged_checkpoint, plans = _masked_plans(None, base, merged, strict=True)
    row = masks.tasks.index(task)
    return _masked_model(base_checkpoint, merged_checkpoint, plans, lambda name: masks[name][row], out)


def consensus_merge(base: Source, merged: Source, masks: TaskMasks, k: int = 2, out: str | os.PathLike | None = None) -> dict[str, Tensor] | Path:
    """Consensus merging θ_0 + 1[Σ_t m_t ≥ k] ⊙ τ_MTL (other tensors as in ``merged``); a state dict, or written to ``out``."""
    _, _, base_checkpoint, merged_checkpoint, plans = _masked_plans(None, base, merged, strict=True)
    return _masked_model(base_checkpoint, merged_checkpoint, plans, lambda name: masks[name].sum(0) >= k, out)


def choose_tall_lambdas(
    models: Sequence[Source] | Mapping[str, Source],
    base: Source,
    merged: Source,
    score: Callable[[str, dict[str, Tensor]], float],
    candidates: Sequence[float] = TALL_LAMBDAS,
) -> tuple[TaskMasks, xr.DataArray]:
    """Each task's λ_t: the candidate whose retrieved model scores best on that task's validation data.

    ``score(task, state_dict)`` returns a number where higher is better (e.g. validation accuracy of
    the task's retrieved model). Returns the masks with the chosen λ_t and the scores, a DataArray
    with dims (``task``, ``lam``) whose ``attrs["chosen"]`` lists λ_t in task order.
    """
    candidate_masks = {lam: tall_masks(models, base, merged, lam) for lam in candidates}
    tasks = next(iter(candidate_masks.values())).tasks
    scores = np.array([[score(task, retrieve(base, merged, candidate_masks[lam], task)) for lam in candidates] for task in tasks], dtype=float)
    chosen = [candidates[int(np.argmax(row))] for row in scores]
    masks = candidate_masks[candidates[0]].select({task: candidate_masks[lam] for task, lam in zip(tasks, chosen)})
    result = xr.DataArray(scores, dims=("task", "lam"), coords={"task": tasks, "lam": list(candidates)}, name="score")
    result.attrs.update(probe="tall_lambdas", chosen=list(chosen))
    return masks, result
