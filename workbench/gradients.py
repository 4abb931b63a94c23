"""The gradient engine: per-task gradients over the shared parameters, from one forward pass.

Every probe and every aggregator asks this module for per-task gradients; nothing else loops over
tasks calling backward. The T task losses are differentiated together by one batched backward
(``torch.autograd.grad`` with ``is_grads_batched``: a vmap over the T rows of the identity), which
gives the Jacobian of the losses with respect to each shared parameter tensor. From it follow the
T × P Jacobian, the T × T Gramian ``G = J Jᵀ``, and both per parameter tensor and per module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["TaskJacobian", "task_jacobian", "model_task_jacobian"]

Grouping = Literal["tensor", "module"]


@dataclass(frozen=True)
class TaskJacobian:
    """Per-task gradients of ``T`` losses with respect to named parameter tensors.

    ``blocks[name]`` has shape ``(T, *parameter.shape)``: row ``t`` is ``∇ L_t`` for that tensor (zeros
    where ``L_t`` does not depend on it). ``losses`` holds the loss values, shape ``(T,)``.
    """

    tasks: list[str]
    blocks: dict[str, Tensor]
    losses: Tensor

    def matrix(self) -> Tensor:
        """The Jacobian ``J`` of shape ``(T, P)``: every block flattened and concatenated in order."""
        return torch.cat([b.reshape(len(self.tasks), -1) for b in self.blocks.values()], dim=1)

    def groups(self, by: Grouping = "tensor") -> dict[str, list[str]]:
        """Tensor names per layer: each tensor alone (``"tensor"``) or grouped by owning module (``"module"``)."""
        if by == "tensor":
            return {name: [name] for name in self.blocks}
        if by == "module":
            grouped: dict[str, list[str]] = {}
            for name in self.blocks:
                grouped.setdefault(name.rpartition(".")[0] or name, []).append(name)
            return grouped
        raise ValueError(f"by must be 'tensor' or 'module', not {by!r}")

    def gramians(self, by: Grouping = "tensor") -> dict[str, Tensor]:
        """``{layer: G_layer}`` with ``G_layer = J_layer J_layerᵀ`` of shape ``(T, T)``."""
        t = len(self.tasks)
        result = {}
        for layer, names in self.groups(by).items():
            gram = torch.zeros(t, t, dtype=self.losses.dtype, device=self.losses.device)
            for name in names:
                flat = self.blocks[name].reshape(t, -1)
                gram = gram + flat @ flat.T
            result[layer] = gram
        return result

    def gramian(self) -> Tensor:
        """The Gramian ``G = J Jᵀ`` of shape ``(T, T)`` over all blocks (the sum of the per-tensor Gramians)."""
        return sum(self.gramians("tensor").values())  # type: ignore[return-value]


def task_jacobian(
    losses: Mapping[str, Tensor],
    params: Sequence[tuple[str, Tensor]],
    *,
    retain_graph: bool = False,
) -> TaskJacobian:
    """The Jacobian of the scalar ``losses`` (``{task: loss}``) with respect to the named ``params``.

    One batched backward differentiates all ``T`` losses at once. A parameter that a loss does not
    reach gets a zero row. Raises ``ValueError`` on a non-scalar or non-finite loss, naming the task.
    """
    if not losses:
        raise ValueError("no losses to differentiate")
    if not params:
        raise ValueError("no parameters to differentiate with respect to")
    names = list(losses)
    for name, loss in losses.items():
        if loss.dim() != 0:
            raise ValueError(f"loss of task {name!r} must be a scalar, got shape {tuple(loss.shape)}")
        if not torch.isfinite(loss):
            raise ValueError(f"loss of task {name!r} is {loss.item()}; cannot differentiate a non-finite loss")
    stacked = torch.stack([losses[n] for n in names])
    tensors = [p for _, p in params]
    grads = _batched_grads(stacked, tensors, retain_graph)
    return TaskJacobian(names, {name: g for (name, _), g in zip(params, grads)}, stacked.detach())


def _batched_grads(stacked: Tensor, tensors: list[Tensor], retain_graph: bool) -> tuple[Tensor, ...]:
    """``(T, *p.shape)`` per tensor ``p``: one vmapped backward, or a loop where vmap is unsupported."""
    t = stacked.shape[0]
    if not stacked.requires_grad:
        return tuple(torch.zeros(t, *p.shape, dtype=p.dtype, device=p.device) for p in tensors)
    identity = torch.eye(t, dtype=stacked.dtype, device=stacked.device)
    try:
        return torch.autograd.grad(
            stacked, tensors, grad_outputs=identity, is_grads_batched=True,
            retain_graph=True, allow_unused=True, materialize_grads=True,
        )  # the graph is kept for the fallback below; it is freed with ``stacked`` on return
    except RuntimeError as error:  # an operator without a batching rule: fall back to one backward per task
        warnings.warn(f"batched backward unavailable ({error}); differentiating task by task", RuntimeWarning, stacklevel=3)
    rows = [
        torch.autograd.grad(stacked[i], tensors, retain_graph=retain_graph or i < t - 1, allow_unused=True, materialize_grads=True)
        for i in range(t)
    ]
    return tuple(torch.stack(per_tensor) for per_tensor in zip(*rows))


def model_task_jacobian(model, x: Tensor, targets: Mapping[str, Tensor]) -> TaskJacobian:
    """Per-task gradients of a :class:`~workbench.tasks.MultiTaskModel` over its shared parameters on one batch."""
    return task_jacobian(model.losses(x, targets), model.shared_parameters())
