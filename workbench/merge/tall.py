"""TALL masks (Wang et al. 2024): which coordinates of a merged model each task needs; per-task retrieval and Consensus merging.

With τ_t = θ_t − θ_0 and τ_MTL = θ_MTL − θ_0 (θ_MTL a merged model; the registered merges take task
arithmetic with λ = 1):

- m_t = |τ_t| > λ_t · |τ_MTL − τ_t| (strict), per coordinate; λ_t chosen per task on labelled data
  from {0.2, ..., 0.6}: the candidate whose retrieved model scores best on that task
  (:func:`choose_tall_lambdas`), or given.
- ``tall``: task t is served by θ_0 + m_t ⊙ τ_MTL (:func:`retrieve`).
- ``consensus``: the coordinates where Σ_t m_t ≥ k (default 2) are kept, θ_0 + 1[Σ_t m_t ≥ k] ⊙ τ_MTL
  (:func:`consensus_merge`), one model for every task.

Masks cover the merged (floating) tensors and are stored bit-packed: one bit per task and entry.
Every function reads its weights one tensor at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.merge.method import MergeData, Merged, TaskModel, weights_in
from workbench.weights.state_dicts import Source, Weights, open_task_weights, open_weights, plan, write_safetensors
from workbench.weights.task_vectors import TaskMasks, task_vectors

__all__ = ["TALL_LAMBDAS", "tall_masks", "choose_tall_lambdas", "retrieve", "consensus_merge", "tall", "consensus"]

TALL_LAMBDAS = (0.2, 0.3, 0.4, 0.5, 0.6)


def _masked_plans(base: Source, models, merged: Source, strict: bool):
    names, tasks = open_task_weights(models) if models is not None else ([], [])
    base_weights, merged_weights = open_weights(base, "base"), open_weights(merged, "merged")
    plans = plan([merged_weights] + tasks, base_weights, strict)
    return names, tasks, base_weights, merged_weights, plans


def tall_masks(
    base: Source, models: Sequence[Source] | Mapping[str, Source], merged: Source, lambdas: float | Sequence[float], strict: bool = True
) -> TaskMasks:
    """m_t = |τ_t| > λ_t |τ_MTL − τ_t| for every merged tensor; ``lambdas`` is one λ for all tasks or one per task."""
    names, tasks, base_weights, merged_weights, plans = _masked_plans(base, models, merged, strict)
    lam = torch.as_tensor(lambdas, dtype=torch.float64).expand(len(tasks)) if np.ndim(lambdas) == 0 else torch.as_tensor(lambdas, dtype=torch.float64)
    if lam.shape != (len(tasks),):
        raise ValueError(f"{lam.numel()} values of λ for {len(tasks)} tasks")
    masks = {}
    for p in plans:
        if p.action != "merge":
            continue
        tau = task_vectors(base_weights[p.name], [c[p.name] for c in tasks])
        tau_mtl = task_vectors(base_weights[p.name], [merged_weights[p.name]])
        masks[p.name] = tau.abs() > lam.to(tau.dtype).view(-1, *[1] * (tau.dim() - 1)) * (tau_mtl - tau).abs()
    return TaskMasks.pack(names, masks)


def _masked_model(base_weights, merged_weights, plans, keep: Callable[[str], Tensor], out) -> dict[str, Tensor] | Path:
    def tensors() -> Iterator[Tensor]:
        for p in plans:
            merged_tensor = merged_weights[p.name]
            if p.action != "merge":
                yield merged_tensor
                continue
            theta0 = base_weights[p.name]
            tau_mtl = task_vectors(theta0, [merged_tensor])[0]
            yield (theta0.to(tau_mtl.dtype) + keep(p.name) * tau_mtl).to(p.dtype)

    if out is None:
        return {p.name: tensor for p, tensor in zip(plans, tensors())}
    return write_safetensors(out, plans, tensors())


def retrieve(base: Source, merged: Source, masks: TaskMasks, task: str, out: str | os.PathLike | None = None) -> dict[str, Tensor] | Path:
    """Task ``task``'s model θ_0 + m_t ⊙ τ_MTL (other tensors as in ``merged``); a state dict, or written to ``out``."""
    if task not in masks.tasks:
        raise ValueError(f"no mask for task {task!r}; the masks are for {masks.tasks}")
    _, _, base_weights, merged_weights, plans = _masked_plans(base, None, merged, strict=True)
    row = masks.tasks.index(task)
    return _masked_model(base_weights, merged_weights, plans, lambda name: masks[name][row], out)


def consensus_merge(base: Source, merged: Source, masks: TaskMasks, k: int = 2, out: str | os.PathLike | None = None) -> dict[str, Tensor] | Path:
    """Consensus merging θ_0 + 1[Σ_t m_t ≥ k] ⊙ τ_MTL (other tensors as in ``merged``); a state dict, or written to ``out``."""
    _, _, base_weights, merged_weights, plans = _masked_plans(base, None, merged, strict=True)
    return _masked_model(base_weights, merged_weights, plans, lambda name: masks[name].sum(0) >= k, out)


def choose_tall_lambdas(
    base: Source,
    models: Sequence[Source] | Mapping[str, Source],
    merged: Source,
    score: Callable[[str, dict[str, Tensor]], float],
    candidates: Sequence[float] = TALL_LAMBDAS,
) -> tuple[TaskMasks, xr.DataArray]:
    """Each task's λ_t: the candidate whose retrieved model scores best on that task.

    ``score(task, state_dict)`` returns a number where higher is better (e.g. validation accuracy of
    the task's retrieved model). Returns the masks with the chosen λ_t and the scores, a DataArray
    with dims (``task``, ``lam``) whose ``attrs["chosen"]`` lists λ_t in task order.
    """
    candidate_masks = {lam: tall_masks(base, models, merged, lam) for lam in candidates}
    tasks = next(iter(candidate_masks.values())).tasks
    scores = np.array([[score(task, retrieve(base, merged, candidate_masks[lam], task)) for lam in candidates] for task in tasks], dtype=float)
    chosen = [candidates[int(np.argmax(row))] for row in scores]
    masks = candidate_masks[candidates[0]].select({task: candidate_masks[lam] for task, lam in zip(tasks, chosen)})
    result = xr.DataArray(scores, dims=("task", "lam"), coords={"task": tasks, "lam": list(candidates)}, name="score")
    result.attrs.update(probe="tall_lambdas", chosen=list(chosen))
    return masks, result


def _task_score(model: TaskModel, task: str, weights: dict[str, Tensor], data: MergeData) -> float:
    """The task's metric of ``weights`` in its own model on its labelled data, signed so that higher is better."""
    module = model.module
    with weights_in(module, weights):
        metric = module.evaluate(data.inputs[task], {task: data.targets[task]})[task][1]
    return metric if module.tasks[task].higher_is_better else -metric


def _summed_masks(
    base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, lambdas, candidates, strict: bool, progress: bool
) -> tuple[dict[str, Tensor], TaskMasks, xr.Dataset]:
    """τ_MTL by task arithmetic with λ = 1, the masks with λ_t given or chosen, and λ_t (with the candidates' scores when chosen)."""
    weights = {task: model.weights for task, model in tasks.items()}
    summed = merge_task_vectors(base, weights, MergeOptions(lam=1.0), strict=strict, progress=progress)
    if lambdas is not None:
        masks = tall_masks(base, weights, summed, lambdas, strict)
        chosen = np.broadcast_to(np.asarray(lambdas, dtype=float), (len(tasks),))
        return summed, masks, xr.Dataset({"lambda": ("task", chosen)}, coords={"task": list(tasks)})
    masks, scores = choose_tall_lambdas(base, weights, summed, lambda task, state: _task_score(tasks[task], task, state, data), candidates)
    return summed, masks, xr.Dataset({"score": scores, "lambda": ("task", scores.attrs.pop("chosen"))})


def tall(
    base: Weights,
    tasks: Mapping[str, TaskModel],
    data: MergeData | None,
    *,
    strict: bool,
    progress: bool,
    lambdas: float | Sequence[float] | None = None,
    candidates: Sequence[float] = TALL_LAMBDAS,
) -> Merged:
    """Each task served by its retrieved model θ_0 + m_t ⊙ τ_MTL; λ_t chosen among ``candidates`` on labelled data unless given."""
    summed, masks, details = _summed_masks(base, tasks, data, lambdas, candidates, strict, progress)
    return Merged(task_weights={task: retrieve(base, summed, masks, task) for task in tasks}, details=details, masks=masks)


def consensus(
    base: Weights,
    tasks: Mapping[str, TaskModel],
    data: MergeData | None,
    *,
    strict: bool,
    progress: bool,
    k: int = 2,
    lambdas: float | Sequence[float] | None = None,
    candidates: Sequence[float] = TALL_LAMBDAS,
) -> Merged:
    """One model keeping the coordinates that at least ``k`` TALL masks keep; masks as in :func:`tall`."""
    if k < 0:
        raise ValueError(f"consensus: k must be non-negative, got {k}")
    summed, masks, details = _summed_masks(base, tasks, data, lambdas, candidates, strict, progress)
    return Merged(weights=consensus_merge(base, summed, masks, k), details=details, masks=masks)
