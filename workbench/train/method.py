"""The interface every multi-task training method implements, and the helpers they share.

A :class:`Method` turns one batch into gradients of all the model's trainable parameters (its
``.grad`` fields), after which the training loop steps the optimizer. Loss-weighting methods
(scalarizers) backpropagate one combined loss; gradient methods (aggregators) ask the gradient
engine for the per-task Jacobian of the shared parameters, combine its rows into one update, and
give each task-specific parameter (a head) the gradient of its own task's loss, as torchjd's
``mtl_backward`` does. A method that computed the full per-task Jacobian returns it, so that a probe
measuring on the training batch need not compute it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from workbench.gradients import TaskJacobian
from workbench.tasks import Inputs

__all__ = ["Method", "StepOutcome", "accumulate", "apply_jacobian_update"]


@dataclass
class StepOutcome:
    """What one :meth:`Method.backward` produced: ``losses`` ``(T,)``, the task ``weights`` ``(T,)`` the
    update gave the tasks (``None`` for methods without weights), and the per-task ``jacobian`` of all
    shared parameters on this batch when the method computed it."""

    losses: Tensor
    weights: Tensor | None = None
    jacobian: TaskJacobian | None = None


class Method:
    """A training method by name with its options; subclasses implement :meth:`backward`.

    ``parameters()`` are learnable parts of the method that the training optimizer steps with the
    model (the log-variances of uncertainty weighting). ``after_step`` runs after the optimizer step
    (FAMO re-reads the losses there), ``end_epoch`` after each pass over the data (DWA).
    ``state_dict``/``load_state_dict`` carry what a stateful method remembers across steps, so that a
    run resumed from a checkpoint continues with the same numbers.
    """

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.options = dict(options or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.options})"

    def backward(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> StepOutcome:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return []

    def after_step(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> None:
        """Called after the optimizer step on the same batch; nothing by default."""

    def end_epoch(self) -> None:
        """Called after every pass over the training data; nothing by default."""

    def to(self, device: torch.device | str) -> Method:
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    def describe(self) -> dict[str, Any]:
        """Name and options, for the attrs of a training history."""
        return {"name": self.name, **{k: v.tolist() if isinstance(v, Tensor) else v for k, v in self.options.items()}}


def accumulate(parameter: Tensor, gradient: Tensor) -> None:
    """Add ``gradient`` to ``parameter.grad`` (setting it when empty)."""
    if parameter.grad is None:
        parameter.grad = gradient.detach().clone()
    else:
        parameter.grad += gradient.detach()


def apply_jacobian_update(model, jacobian: TaskJacobian, update: Tensor, *, vector: bool = False, task_scale: Tensor | None = None) -> None:
    """Write an update of the shared parameters and the task-specific gradients into ``.grad``.

    ``update`` is either weights ``(T,)`` that combine the Jacobian's rows (block by block, the
    Jacobian is never concatenated) or, with ``vector=True``, a flat update ``(P,)`` in the order of
    :meth:`TaskJacobian.matrix`. Task-specific parameters get their own task's gradient from
    ``jacobian.task_grads``, multiplied by ``task_scale[t]`` when given.
    """
    shared = dict(model.shared_parameters())
    if vector:
        offset = 0
        for name, block in jacobian.blocks.items():
            size = block[0].numel()
            accumulate(shared[name], update[offset : offset + size].reshape(block.shape[1:]))
            offset += size
    else:
        for name, block in jacobian.blocks.items():
            accumulate(shared[name], torch.tensordot(update.to(block.dtype), block, dims=1))
    if jacobian.task_grads is None:
        raise ValueError("the Jacobian holds no task-specific gradients; compute it with task_grads=True")
    for index, (task, params) in enumerate(model.task_parameters().items()):
        for name, parameter in params:
            gradient = jacobian.task_grads[name]
            accumulate(parameter, gradient if task_scale is None else task_scale[index] * gradient)
