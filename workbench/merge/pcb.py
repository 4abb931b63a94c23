"""PCB merging, parameter competition balancing (Du et al. 2024, Parameter competition balancing for model merging;
as the official ``pcb-merging.py`` computes it): each entry of each task vector is weighted by how large it is within
its task and how much it agrees with the other tasks, and only the most important entries of each task are kept.

The task vectors of all merged tensors, flattened into one row per task, τ ``(T, D)``:

1. clip: ``|τ_m|`` is clamped to its own entries of sorted places ``⌊10⁻⁴ D⌋`` and ``⌊(1 − 10⁻⁴) D⌋ − 1`` (the 0.01% and
   99.99% quantiles), τ̂_m = sign(τ_m) · that;
2. intra-balancing: β^self_m = exp(T · minmax(|τ̂_m|)²), minmax scaling each row to [0, 1] (0 where a row is constant);
3. inter-balancing: β^cross_m = tanh(τ_m ⊙ Σ_k τ_k) (positive where the task agrees with the sum);
4. drop and rescale: β_m = β^self_m β^cross_m is floored at its own value of sorted place ``⌊(1 − r) D⌋`` and
   minmax-scaled: the entries below the top ``r`` fraction get 0, the largest 1;
5. merged = Σ_m β_m τ̂_m / max(Σ_m β_m, 10⁻¹²), θ = θ_0 + λ · merged.

``ratio`` is r (0.1, the official default). The paper searches λ on validation data (the official example per task, by
nevergrad); here λ is one number, which a study sweeps. The whole model's task vectors are held at once (T · D numbers
in the work dtype): the quantiles are over the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from workbench.merge.method import MergeData, Merged, TaskModel
from workbench.merge.streaming import fixed_tensor, open_inputs
from workbench.weights.state_dicts import Weights
from workbench.weights.task_vectors import task_vectors

__all__ = ["pcb", "pcb_merged_vector"]


def _sorted_place(rows: Tensor, place: int) -> Tensor:
    """Each row's entry of 0-based sorted place ``place`` (a selection, not a sort); ``(T, 1)``."""
    return rows.kthvalue(place + 1, dim=1, keepdim=True).values


def _minmax(rows: Tensor) -> Tensor:
    low, high = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    span = high - low
    return torch.where(span > 0, (rows - low) / span.where(span > 0, 1.0), torch.zeros_like(rows))


def pcb_merged_vector(tau: Tensor, ratio: float = 0.1) -> Tensor:
    """The merged task vector ``(D,)`` of the flattened task vectors ``tau`` ``(T, D)`` (steps 1–5 of the module docstring)."""
    count, size = tau.shape
    magnitude = tau.abs()
    magnitude = magnitude.clamp(_sorted_place(magnitude, int(size * 1e-4)), _sorted_place(magnitude, int(size * (1 - 1e-4)) - 1))
    clipped = tau.sign() * magnitude
    balance = torch.exp(count * _minmax(magnitude).square_()) * torch.tanh(tau * tau.sum(0))
    scale = _minmax(balance.clamp(min=_sorted_place(balance, int(size * (1 - ratio)))))
    return (clipped * scale).sum(0) / scale.sum(0).clamp(min=1e-12)


def pcb(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool,
        ratio: float = 0.1, lam: float = 1.0) -> Merged:
    """θ_0 + λ · PCB's merged task vector (see the module docstring)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio (the fraction of each task's entries kept) must be in (0, 1], got {ratio!r}")
    inputs = open_inputs(base, {task: model.weights for task, model in tasks.items()}, strict)
    merged_plans = [p for p in inputs.plans if p.action == "merge"]
    if not merged_plans:
        return Merged(weights={p.name: fixed_tensor(p, inputs) for p in inputs.plans})
    tau = torch.cat([task_vectors(inputs.base[p.name], inputs.tensors_of(p.name)).reshape(len(inputs.names), -1) for p in merged_plans], dim=1)
    if not bool(torch.isfinite(tau).all()):
        inputs.check_finite([p.name for p in merged_plans])
    vector = pcb_merged_vector(tau, ratio)
    weights, start = {}, 0
    for p in inputs.plans:
        if p.action != "merge":
            weights[p.name] = fixed_tensor(p, inputs)
            continue
        theta0 = inputs.base[p.name]
        size = theta0.numel()
        weights[p.name] = (theta0.to(vector.dtype) + lam * vector[start:start + size].reshape(theta0.shape)).to(p.dtype)
        start += size
    return Merged(weights=weights)
