"""EMR merging, elect, mask and rescale (Huang et al. 2024, EMR-Merging: tuning-free high-performance model merging;
as FusionBench 0.2.33's ``emr_merge`` computes it): one unified task vector and, per task, a mask and a scale that
bring it back towards that task's own.

With task vectors τ_m = θ_m − θ_0 of the merged tensors:

- elect: per tensor, the sign γ = sign(Σ_m τ_m) (0 counting as −, as the official code has it), and the unified
  vector τ_uni = γ ⊙ max_m |M_m ⊙ τ_m|, the largest magnitude among the tasks that agree with γ;
- mask: M_m = (τ_m ⊙ γ > 0);
- rescale: ρ_m = Σ_tensors mean|τ_m| / Σ_tensors mean|M_m ⊙ τ_uni| (tensor means summed over the model; 1 where
  the denominator is 0, a task with no entry of the elected sign);
- task ``m`` is served by θ_0 + ρ_m M_m ⊙ τ_uni: one shared vector, a bit per entry and a number per task.

``details`` holds ρ_m; ``masks`` the bit-packed M_m. The unified vector and the masks are held for the whole model
(two passes: ρ_m needs every tensor).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import xarray as xr
from torch import Tensor

from workbench.merge.method import MergeData, Merged, TaskModel
from workbench.merge.streaming import fixed_tensor, open_inputs
from workbench.progress import progress_bytes
from workbench.weights.state_dicts import Weights
from workbench.weights.task_vectors import TaskMasks, task_vectors

__all__ = ["emr", "elect_mask"]


def elect_mask(tau: Tensor) -> tuple[Tensor, Tensor]:
    """The unified vector ``(*shape)`` and the masks ``(T, *shape)`` (bool) of the task vectors ``tau`` ``(T, *shape)``."""
    flag = torch.where(tau.sum(0) > 0, 1.0, -1.0).to(tau.dtype)
    masks = tau * flag > 0
    return (tau * masks).abs().amax(0) * flag, masks


def emr(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool) -> Merged:
    """Each task served by θ_0 + ρ_m M_m ⊙ τ_uni (see the module docstring)."""
    inputs = open_inputs(base, {task: model.weights for task, model in tasks.items()}, strict)
    count = len(inputs.names)
    unified, masks = {}, {}
    scales, unified_scales = torch.zeros(count, dtype=torch.float64), torch.zeros(count, dtype=torch.float64)
    for p in progress_bytes(inputs.plans, inputs.bytes_read(), "emr", enabled=progress, leave=False):
        if p.action != "merge":
            continue
        tau = task_vectors(inputs.base[p.name], inputs.tensors_of(p.name))
        if not bool(torch.isfinite(tau).all()):
            inputs.check_finite([p.name])
        unified[p.name], masks[p.name] = elect_mask(tau)
        scales += tau.abs().reshape(count, -1).mean(1).double()
        unified_scales += (unified[p.name] * masks[p.name]).abs().reshape(count, -1).mean(1).double()
    rescalers = torch.where(unified_scales > 0, scales / unified_scales.where(unified_scales > 0, 1.0), 1.0)
    task_weights = {}
    for m, task in enumerate(inputs.names):
        weights = {}
        for p in inputs.plans:
            if p.action != "merge":
                weights[p.name] = fixed_tensor(p, inputs)
                continue
            theta0 = inputs.base[p.name]
            delta = unified[p.name] * masks[p.name][m] * rescalers[m].to(unified[p.name].dtype)
            weights[p.name] = (theta0.to(delta.dtype) + delta).to(p.dtype)
        task_weights[task] = weights
    details = xr.Dataset({"rescaler": ("task", rescalers.numpy())}, coords={"task": inputs.names})
    return Merged(task_weights=task_weights, details=details, masks=TaskMasks.pack(inputs.names, masks))
