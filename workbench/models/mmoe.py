"""The multi-gate mixture of experts (MMoE, Ma et al. 2018) under the model contract.

``E`` shared experts ``f_e`` and, for each task, a softmax gate ``g_t(x)`` over them give each task its
own representation ``z_t = Σ_e g_{t,e}(x) f_e(x)``, which feeds that task's tower (here a linear head).
Two ways to build the experts from a :class:`~workbench.models.backbone.Backbone`:

- ``experts="mlp"`` (default): the backbone is a shared trunk; each expert is an MLP of widths
  ``expert_hidden`` on the trunk's flattened features, and the gates read those features;
- ``experts="backbone"``: each expert is a fresh backbone on the input and the gates read the
  flattened input, as LibMTL's MMoE builds it (tensor inputs only).

Under the model contract the encoder's output ``Z`` stacks the per-task mixtures, shape
``(B, T, C)``, and head ``t`` reads slot ``t`` (:class:`TaskSlot`). The gates serve one task each,
so they are task-specific parameters, not shared ones: the gradient engine, the conflict probe and
the aggregators see the trunk and the experts only, and each gate is trained on its own task's
loss. What the probes then measure: the per-task gradients over the experts and trunk (how each
task, through its own mixture, pulls on the shared experts), and ``∂L_t/∂Z``, which is non-zero only
in task ``t``'s slot: the saliency of the task's own mixed representation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.encoders import mlp_encoder
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["MMoEEncoder", "TaskSlot", "mmoe"]


class MMoEEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: the gated mixture of ``experts`` for each of ``tasks``.

    With a ``trunk``, the experts and the gates read the trunk's features, flattened to ``(B, F)``;
    without one, the experts read the input itself and the gates the flattened input ``(B, F)``.
    ``make_expert()`` builds one expert (its output is flattened to ``(B, C)``); the gates are linear
    maps of the ``features`` F to ``n_experts`` logits.
    """

    def __init__(
        self, tasks: Sequence[str], features: int, make_expert: Callable[[], nn.Module], n_experts: int = 4, trunk: nn.Module | None = None
    ) -> None:
        super().__init__()
        if n_experts < 1 or not tasks:
            raise ValueError(f"MMoE needs at least one expert and one task, got {n_experts} experts and tasks {list(tasks)}")
        self.task_order = list(tasks)
        self.trunk = trunk
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.gates = nn.ModuleDict({task: nn.Linear(features, n_experts) for task in tasks})

    def forward(self, x: Inputs) -> Tensor:
        if self.trunk is None:
            inputs, features = x, x.flatten(1)
        else:
            inputs = features = self.trunk(x).flatten(1)
        experts = torch.stack([expert(inputs).flatten(1) for expert in self.experts], dim=1)  # (B, E, C)
        gates = torch.stack([torch.softmax(self.gates[t](features), dim=-1) for t in self.task_order], dim=1)  # (B, T, E)
        return torch.einsum("bte,bec->btc", gates, experts)

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's gate: trained on its own loss, never shared."""
        return {task: [(f"gates.{task}.{name}", p) for name, p in self.gates[task].named_parameters()] for task in self.task_order}


class TaskSlot(nn.Module):
    """Selects task ``index``'s representation ``Z[:, index]`` from an MMoE's ``(B, T, C)`` output."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, z: Tensor) -> Tensor:
        return z[:, self.index]


def mmoe(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int = 4, expert_hidden: Sequence[int] = (64,), experts: Literal["mlp", "backbone"] = "mlp"
) -> MultiTaskModel:
    """An MMoE of ``n_experts`` experts on ``backbone`` (see the module docstring) with a linear head per task on its slot."""
    names = [t.name for t in tasks]
    if experts == "mlp":
        trunk = backbone.make()
        features = math.prod(backbone.shape)
        encoder = MMoEEncoder(names, features, lambda: mlp_encoder(features, expert_hidden), n_experts, trunk)
        width = expert_hidden[-1]
    elif experts == "backbone":
        if backbone.inputs is None:
            raise ValueError(f"experts='backbone' gates on the flattened input, which the {backbone.name} backbone's named inputs are not; use experts='mlp'")
        encoder = MMoEEncoder(names, math.prod(backbone.inputs), backbone.make, n_experts)
        width = math.prod(backbone.shape)
    else:
        raise ValueError(f"experts must be 'mlp' or 'backbone', not {experts!r}")
    heads = {t.name: nn.Sequential(TaskSlot(i), nn.Linear(width, t.out_features)) for i, t in enumerate(tasks)}
    return MultiTaskModel(encoder, tasks, heads=heads)
