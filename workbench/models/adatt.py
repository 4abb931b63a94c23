"""AdaTT, adaptive task-to-task fusion (Li et al. 2023; the official ``mtl_lib.py``), under the model contract.

The backbone is a shared trunk; its flattened features ``x`` (``(B, F)``) are every task's input at level 0.
Each fusion level ``l`` gives each task ``t`` its own ``m`` experts ``f^l_{t,1..m}``, a linear layer and a
ReLU of width ``widths[l]`` reading task ``t``'s input ``x_t``. Task ``t``'s output of the level fuses all
tasks' experts through its gate, a softmax over the ``T·m`` experts of ``W_t x_t``, and adds a residual of
its own experts:

    h_t = Σ_{(s, k)} g_{t,(s,k)}(x_t) f_{s,k}(x_s) + r_t,   r_t = Σ_k v_{t,k} f_{t,k}(x_t)  (m > 1),  r_t = f_{t,1}(x_t)  (m = 1)

with ``v`` learned, initialised ``U(±√(1/m))``. ``h_t`` is task ``t``'s input to the next level; the last
level's ``h_t`` is its representation. The shared experts of AdaTT-w-shared are not here.

Under the contract ``Z`` is ``(B, T, C)`` and head ``t`` reads slot ``t``. Every expert reaches every task
through the gates, and so does every gate before the last level (its fused output is the input of its
task's next experts): those and the trunk are the shared parameters the gradient engine, the conflict
probe and the aggregators see. A task's gate and residual weights at the last level are its own. The
saliency probe reads each task's own representation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import GateReading, gated_expert_names, slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["AdaTTEncoder", "adatt"]


class _Level(nn.Module):
    """One fusion level: ``m`` experts per task, a gate per task over all ``T·m`` of them, residual weights."""

    def __init__(self, tasks: Sequence[str], width_in: int, width_out: int, m: int) -> None:
        super().__init__()
        self.experts = nn.ModuleDict({t: nn.ModuleList(nn.Sequential(nn.Linear(width_in, width_out), nn.ReLU()) for _ in range(m)) for t in tasks})
        self.gates = nn.ModuleDict({t: nn.Linear(width_in, len(tasks) * m) for t in tasks})
        self.residual = nn.ParameterDict({t: nn.Parameter(torch.empty(m).uniform_(-math.sqrt(1 / m), math.sqrt(1 / m))) for t in tasks} if m > 1 else {})

    def forward(self, h: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, GateReading]]:
        """Each task's fused output, and its gate's reading over every task's experts."""
        own = {t: torch.stack([expert(h[t]) for expert in experts], dim=1) for t, experts in self.experts.items()}  # (B, m, C)
        every = torch.cat([own[t] for t in self.experts], dim=1)  # (B, T·m, C), task by task
        names = [name for t, experts in self.experts.items() for name in gated_expert_names(t, 0, len(experts))]
        fused, readings = {}, {}
        for t in self.experts:
            gate = torch.softmax(self.gates[t](h[t]), dim=-1)
            residual = torch.einsum("k,bkc->bc", self.residual[t], own[t]) if self.residual else own[t][:, 0]
            fused[t] = torch.einsum("be,bec->bc", gate, every) + residual
            readings[t] = GateReading(names, gate, every)
        return fused, readings


class AdaTTEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: the trunk, then fusion levels of widths ``widths`` with ``m`` experts per task each."""

    def __init__(self, tasks: Sequence[str], trunk: nn.Module, features: int, widths: Sequence[int], m: int = 1) -> None:
        super().__init__()
        if m < 1 or not widths or min(widths) < 1:
            raise ValueError(f"adatt needs at least one expert per task (m={m}) and one level of positive width (widths={list(widths)})")
        self.task_order = list(tasks)
        self.trunk = trunk
        sizes = [features, *widths]
        self.levels = nn.ModuleList(_Level(tasks, a, b, m) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x: Inputs) -> Tensor:
        return self._levels(x)[0]

    def _levels(self, x: Inputs) -> tuple[Tensor, dict[str, dict[str, GateReading]]]:
        features = self.trunk(x).flatten(1)
        h = {t: features for t in self.task_order}
        readings = {}
        for i, level in enumerate(self.levels):
            h, readings[f"level {i}"] = level(h)
        return torch.stack([h[t] for t in self.task_order], dim=1), readings

    def expert_names(self, task: str) -> list[str]:
        """Every task's gate weighs every task's experts: ``{task} 0``, … task by task."""
        return [name for t in self.task_order for name in gated_expert_names(t, 0, len(self.levels[0].experts[t]))]

    def gate_readings(self, x: Inputs) -> dict[str, dict[str, GateReading]]:
        """The gates on ``x``, level by level: ``{"level 0": {task: GateReading}, …}``."""
        return self._levels(x)[1]

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's gate and residual weights at the last level: before it, a task's fused output is the input
        of its experts, which every task's gate reads, so the earlier levels' gates serve all tasks."""
        i, last = len(self.levels) - 1, self.levels[-1]
        own = {t: [(f"levels.{i}.gates.{t}.{name}", p) for name, p in last.gates[t].named_parameters()] for t in self.task_order}
        if last.residual:
            for t in self.task_order:
                own[t].append((f"levels.{i}.residual.{t}", last.residual[t]))
        return own


def adatt(tasks: Sequence[Task], backbone: Backbone, widths: Sequence[int] = (64, 64), experts_per_task: int = 1) -> MultiTaskModel:
    """AdaTT on ``backbone`` as a trunk: fusion levels of ``widths`` with ``experts_per_task`` experts per task, a linear head per task."""
    encoder = AdaTTEncoder([t.name for t in tasks], backbone.make(), math.prod(backbone.shape), tuple(widths), experts_per_task)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, widths[-1]))
