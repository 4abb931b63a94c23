"""Task-based sharpness-aware minimisation (Phan et al. 2022, "flat regions"): one SAM step per task.

For each task ``t`` the parameters it uses (the shared ones and its own) are moved a distance ``ρ``
along its own gradient, ``ε_t = ρ g_t / ‖g_t‖``, and the gradient of ``L_t`` is taken there. The T
sharpness-aware gradients of the shared parameters are then combined by any aggregator, and each
task-specific parameter gets its own task's sharpness-aware gradient.

Cost: the gradient engine's pass for the ``g_t`` plus one forward and backward per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from workbench.gradients import TaskJacobian, model_task_jacobian
from workbench.tasks import Inputs
from workbench.train.aggregated import Aggregated, aggregate
from workbench.train.method import Method, StepOutcome, apply_jacobian_update

__all__ = ["TaskSAM"]


class TaskSAM(Method):
    """Per-task SAM with radius ``rho``, combining the sharpness-aware gradients with ``inner`` (an :class:`Aggregated` method)."""

    def __init__(self, inner: Aggregated, rho: float = 0.05, name: str = "sam") -> None:
        if rho <= 0:
            raise ValueError(f"sam: rho must be positive, got {rho}")
        super().__init__(name, {"rho": rho, "aggregator": inner.name, **{f"aggregator_{k}": v for k, v in inner.options.items()}})
        self.inner, self.rho = inner, rho

    def backward(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> StepOutcome:
        here = model_task_jacobian(model, x, targets, task_grads=True, strategy=self.inner.strategy)
        shared = model.shared_parameters()
        own = model.task_parameters()
        rows: dict[str, list[Tensor]] = {name: [] for name, _ in shared}
        flat_grads: dict[str, Tensor] = {}
        for index, task in enumerate(model.task_names):
            used = shared + own[task]
            direction = [here.blocks[name][index] for name, _ in shared] + [here.task_grads[name] for name, _ in own[task]]
            norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction)).to(direction[0].dtype)
            steps = [self.rho * d / norm if norm > 0 else torch.zeros_like(d) for d in direction]
            with torch.no_grad():
                for (_, p), e in zip(used, steps):
                    p.add_(e)
            try:
                loss = model.task_loss(x, targets, task)
                grads = torch.autograd.grad(loss, [p for _, p in used], allow_unused=True, materialize_grads=True)
            finally:
                with torch.no_grad():
                    for (_, p), e in zip(used, steps):
                        p.sub_(e)
            for (name, _), g in zip(shared, grads):
                rows[name].append(g)
            flat_grads.update({name: g for (name, _), g in zip(own[task], grads[len(shared) :])})
        flat = TaskJacobian(here.tasks, {name: torch.stack(g) for name, g in rows.items()}, here.losses, task_grads=flat_grads)
        update, is_vector = aggregate(self.inner.aggregator, flat)
        apply_jacobian_update(model, flat, update, vector=is_vector)
        return StepOutcome(here.losses, None if is_vector else update.detach(), here)

    def to(self, device: torch.device | str) -> TaskSAM:
        self.inner.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)
