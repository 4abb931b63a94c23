"""The gradient engine: per-task gradients over the shared parameters, from one forward pass.

Every probe and every aggregator asks this module for per-task gradients; nothing else loops over
tasks calling backward. For a :class:`~workbench.tasks.MultiTaskModel` the work is split in two:

1. the encoder runs once; each head runs on its own detached copy of the representation ``Z``, so one
   backward through the (cheap) heads gives every task's cotangent ``V_t = ∂L_t/∂Z``, shape ``(T, *Z.shape)``;
2. one batched vector-Jacobian product of the encoder (``torch.autograd.grad`` with
   ``is_grads_batched``: a vmap over the T cotangents) gives the per-task gradient of every shared
   parameter tensor.

Differentiating the stacked losses directly (what :func:`task_jacobian` does for arbitrary losses)
would push T batched cotangents through every head and add up T mostly-zero ``(T, *Z.shape)``
tensors at ``Z``; the split avoids that O(T²) work. From the blocks follow the T × P Jacobian, the
T × T Gramian ``G = J Jᵀ``, and both per parameter tensor and per module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench.tasks import check_finite

__all__ = ["TaskJacobian", "task_jacobian", "model_task_jacobian"]

Grouping = Literal["tensor", "module"]


@dataclass(frozen=True)
class TaskJacobian:
    """Per-task gradients of ``T`` losses with respect to named parameter tensors.

    ``blocks[name]`` has shape ``(T, *parameter.shape)``: row ``t`` is ``∇ L_t`` for that tensor (zeros
    where ``L_t`` does not depend on it). ``losses`` holds the loss values, shape ``(T,)``.
    ``representation_grads`` is ``∂L_t/∂Z`` of shape ``(T, *Z.shape)`` when the Jacobian came from a
    model's shared representation ``Z`` (the per-sample task saliency of Rep-MTL), else ``None``.
    """

    tasks: list[str]
    blocks: dict[str, Tensor]
    losses: Tensor
    representation_grads: Tensor | None = None

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


def _check_losses(losses: Mapping[str, Tensor]) -> None:
    if not losses:
        raise ValueError("no losses to differentiate")
    for name, loss in losses.items():
        if loss.dim() != 0:
            raise ValueError(f"loss of task {name!r} must be a scalar, got shape {tuple(loss.shape)}")
    check_finite(losses)


def task_jacobian(losses: Mapping[str, Tensor], params: Sequence[tuple[str, Tensor]]) -> TaskJacobian:
    """The Jacobian of arbitrary scalar ``losses`` (``{task: loss}``) with respect to the named ``params``.

    One batched backward differentiates all ``T`` losses at once. A parameter that a loss does not
    reach gets a zero row. Raises ``ValueError`` on a non-scalar or non-finite loss, naming the task.
    For a :class:`~workbench.tasks.MultiTaskModel` prefer :func:`model_task_jacobian`.
    """
    _check_losses(losses)
    names = list(losses)
    stacked = torch.stack([losses[n] for n in names])
    identity = torch.eye(len(names), dtype=stacked.dtype, device=stacked.device)
    grads = _batched_vjp(stacked, params, identity)
    return TaskJacobian(names, grads, stacked.detach())


def model_task_jacobian(
    model, x: Tensor, targets: Mapping[str, Tensor], *, keep_representation_grads: bool = False
) -> TaskJacobian:
    """Per-task gradients of a :class:`~workbench.tasks.MultiTaskModel` over its shared parameters on one batch.

    ``x`` is the input batch and ``targets`` maps every task to its targets ``(B,)``. One encoder
    forward, one backward through the heads, one batched backward through the encoder.
    ``keep_representation_grads`` keeps ``∂L_t/∂Z`` ``(T, *Z.shape)`` in the result (memory: T copies of ``Z``).
    """
    z = model.represent(x)
    names = model.task_names
    leaves = [z.detach().requires_grad_() for _ in names]  # each head sees its own copy of Z
    losses = model.losses_from_outputs({name: model.heads[name](leaf) for name, leaf in zip(names, leaves)}, targets)
    stacked = torch.stack([losses[n] for n in names])
    cotangents = torch.stack(torch.autograd.grad(stacked.sum(), leaves, allow_unused=True, materialize_grads=True))
    grads = _batched_vjp(z, model.shared_parameters(), cotangents)
    return TaskJacobian(names, grads, stacked.detach(), cotangents if keep_representation_grads else None)


def _batched_vjp(output: Tensor, params: Sequence[tuple[str, Tensor]], cotangents: Tensor) -> dict[str, Tensor]:
    """``{name: (T, *p.shape)}``: the T vector-Jacobian products ``cotangents[t] · ∂output/∂p``.

    One vmapped backward; one backward per row where an operator has no batching rule.
    """
    if not params:
        raise ValueError("no parameters to differentiate with respect to")
    names, tensors = [n for n, _ in params], [p for _, p in params]
    t = cotangents.shape[0]
    if not output.requires_grad:
        return {n: torch.zeros(t, *p.shape, dtype=p.dtype, device=p.device) for n, p in params}
    try:
        grads = torch.autograd.grad(
            output, tensors, grad_outputs=cotangents, is_grads_batched=True,
            retain_graph=True, allow_unused=True, materialize_grads=True,
        )  # the graph is kept for the fallback below; it is freed with ``output`` on return
    except RuntimeError as error:  # an operator without a batching rule
        warnings.warn(f"batched backward unavailable ({error}); differentiating task by task", RuntimeWarning, stacklevel=3)
        rows = [
            torch.autograd.grad(output, tensors, grad_outputs=cotangents[i], retain_graph=i < t - 1, allow_unused=True, materialize_grads=True)
            for i in range(t)
        ]
        grads = tuple(torch.stack(per_tensor) for per_tensor in zip(*rows))
    return dict(zip(names, grads))
