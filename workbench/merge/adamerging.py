"""AdaMerging (Yang et al. 2024): merging coefficients learned by entropy minimisation on unlabelled test inputs.

``θ = θ_0 + Σ_t λ_t τ_t`` (``granularity="task"``) or ``θ_0 + Σ_t λ_{t,l} τ_{t,l}`` per merged tensor
``l`` (``"layer"``), the coefficients initialised at 0.3 and learned with Adam by minimising the mean
entropy of every task's predictions on batches of its own unlabelled inputs, each task's predictions
from its own model (its head) with the merged tensors. It adapts to the inputs it will serve: the
published setting reads the test inputs (the entry's ``test_time`` trait). Entropy needs class
probabilities: a regression task is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from workbench.merge.method import MergeData, Merged, TaskModel, task_tensors
from workbench.progress import progress as progress_bar
from workbench.tasks import num_samples, take_rows
from workbench.weights.state_dicts import Weights
from workbench.weights.task_vectors import work_dtype

__all__ = ["prediction_entropy", "adamerging", "task_wise_adamerging", "layer_wise_adamerging"]


def prediction_entropy(output: Tensor) -> Tensor:
    """Mean prediction entropy of logits ``(B, C)`` (``C = 1``: a sigmoid's two outcomes)."""
    if output.shape[-1] == 1:
        p = torch.sigmoid(output)
        return -(p * p.clamp_min(1e-12).log() + (1 - p) * (1 - p).clamp_min(1e-12).log()).mean()
    return -(output.softmax(-1) * output.log_softmax(-1)).sum(-1).mean()


def adamerging(
    base: Weights,
    tasks: Mapping[str, TaskModel],
    data: MergeData,
    *,
    strict: bool,
    progress: bool,
    granularity: Literal["task", "layer"] = "task",
    steps: int = 100,
    lr: float = 1e-3,
    init: float = 0.3,
    batch_size: int = 64,
    seed: int = 0,
) -> Merged:
    """Learn the coefficients (see the module docstring); the merged tensors and, as ``details``, the ``coefficient``
    ``(task)`` or ``(task, layer)``."""
    if granularity not in ("task", "layer"):
        raise ValueError(f"granularity must be 'task' or 'layer', got {granularity!r}")
    if steps < 0:
        raise ValueError(f"AdaMerging takes a non-negative number of steps, got {steps}")
    names = list(tasks)
    for task, model in tasks.items():
        if model.module.tasks[task].kind != "classification":
            raise ValueError(f"AdaMerging minimises prediction entropy, which task {task!r} ({model.module.tasks[task].kind}) does not have")
    thetas = task_tensors(base, tasks, strict)
    keys = base.keys()
    theta0 = {key: base[key].to(work_dtype(base.spec(key)[1])) for key in keys}
    vectors = {key: torch.stack([thetas[t][key].to(theta0[key].dtype) - theta0[key] for t in names]) for key in keys}  # (T, *shape)
    shape = (len(names),) if granularity == "task" else (len(names), len(keys))
    coefficients = torch.full(shape, float(init), dtype=torch.float64 if any(v.dtype == torch.float64 for v in vectors.values()) else torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    modules = {t: tasks[t].module for t in names}
    fixed = {t: {name: p.detach() for name, p in module.named_parameters()} for t, module in modules.items()}  # heads and frozen blocks
    modes = {t: module.training for t, module in modules.items()}

    def merged() -> dict[str, Tensor]:
        result = {}
        for index, key in enumerate(keys):
            weights = coefficients if granularity == "task" else coefficients[:, index]
            result[key] = (theta0[key] + torch.tensordot(weights.to(vectors[key].dtype), vectors[key], dims=1)).to(base.spec(key)[1])
        return result

    try:
        for module in modules.values():
            module.eval()
        for _ in progress_bar(range(steps), "AdaMerging", enabled=progress, leave=False):
            optimizer.zero_grad()
            parameters = merged()
            loss = 0.0
            for task in names:
                rows = torch.randint(num_samples(data.inputs[task]), (batch_size,), generator=generator)
                outputs = torch.func.functional_call(modules[task], {**fixed[task], **parameters}, (take_rows(data.inputs[task], rows),))
                loss = loss + prediction_entropy(outputs[task])
            loss.backward()
            optimizer.step()
    finally:
        for task, module in modules.items():
            module.train(modes[task])
    with torch.no_grad():
        weights = merged()
    dims = ("task",) if granularity == "task" else ("task", "layer")
    coords = {"task": names} | ({} if granularity == "task" else {"layer": keys})
    details = xr.Dataset({"coefficient": (dims, coefficients.detach().numpy().astype(np.float64))}, coords=coords)
    return Merged(weights=weights, details=details)


def task_wise_adamerging(
    base: Weights, tasks: Mapping[str, TaskModel], data: MergeData, *, strict: bool, progress: bool,
    steps: int = 100, lr: float = 1e-3, init: float = 0.3, batch_size: int = 64, seed: int = 0,
) -> Merged:
    """AdaMerging with one coefficient per task."""
    return adamerging(base, tasks, data, strict=strict, progress=progress, granularity="task", steps=steps, lr=lr, init=init, batch_size=batch_size, seed=seed)


def layer_wise_adamerging(
    base: Weights, tasks: Mapping[str, TaskModel], data: MergeData, *, strict: bool, progress: bool,
    steps: int = 100, lr: float = 1e-3, init: float = 0.3, batch_size: int = 64, seed: int = 0,
) -> Merged:
    """AdaMerging with one coefficient per task and merged tensor."""
    return adamerging(base, tasks, data, strict=strict, progress=progress, granularity="layer", steps=steps, lr=lr, init=init, batch_size=batch_size, seed=seed)
