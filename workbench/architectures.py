"""Multi-task architectures beyond hard parameter sharing.

Hard parameter sharing is :class:`~workbench.tasks.MultiTaskModel` itself: one encoder, one head per
task. :class:`MMoEEncoder` is the multi-gate mixture of experts (Ma et al. 2018): ``E`` shared
experts ``f_e`` and, for each task, a softmax gate ``g_t(x)`` over them, giving each task its own
representation ``z_t = Σ_e g_{t,e}(x) f_e(x)``, on top of an optional shared trunk.

Under the model contract the encoder's output ``Z`` stacks the per-task mixtures, shape
``(B, T, C)``, and head ``t`` reads slot ``t`` (:class:`TaskSlot`). The gates serve one task each,
so they are task-specific parameters, not shared ones: the gradient engine, the conflict probe and
the aggregators see the trunk and the experts only, and each gate is trained on its own task's
loss. What the probes then measure: the per-task gradients over the experts and trunk (how each
task, through its own mixture, pulls on the shared experts), and ``∂L_t/∂Z``, which is non-zero only
in task ``t``'s slot: the saliency of the task's own mixed representation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["MMoEEncoder", "TaskSlot", "mmoe_model"]


class MMoEEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: the gated mixture of ``experts`` for each of ``tasks``.

    ``trunk`` maps the input to features ``(B, F)`` (flattened when it returns more dims; default:
    the flattened input); ``make_expert()`` builds one expert ``(B, F) -> (B, C)``; the gates are
    linear maps of the trunk's features to ``n_experts`` logits.
    """

    def __init__(
        self, tasks: Sequence[str], features: int, make_expert: Callable[[], nn.Module], n_experts: int = 4, trunk: nn.Module | None = None
    ) -> None:
        super().__init__()
        if n_experts < 1 or not tasks:
            raise ValueError(f"MMoE needs at least one expert and one task, got {n_experts} experts and tasks {list(tasks)}")
        self.task_order = list(tasks)
        self.trunk = trunk if trunk is not None else nn.Flatten()
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.gates = nn.ModuleDict({task: nn.Linear(features, n_experts) for task in tasks})

    def forward(self, x: Inputs) -> Tensor:
        features = self.trunk(x).flatten(1)
        experts = torch.stack([expert(features) for expert in self.experts], dim=1)  # (B, E, C)
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


def mmoe_model(
    tasks: Sequence[Task], features: int, expert_hidden: Sequence[int] = (64,), n_experts: int = 4, trunk: nn.Module | None = None
) -> MultiTaskModel:
    """An MMoE with MLP experts ``features -> expert_hidden`` (ReLU) and a linear tower per task on its slot."""
    from workbench.tasks import mlp_encoder

    names = [t.name for t in tasks]
    encoder = MMoEEncoder(names, features, lambda: mlp_encoder(features, expert_hidden), n_experts, trunk)
    heads = {t.name: nn.Sequential(TaskSlot(i), nn.Linear(expert_hidden[-1], t.out_features)) for i, t in enumerate(tasks)}
    return MultiTaskModel(encoder, tasks, heads=heads)
