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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.encoders import mlp_encoder
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["GateReading", "gated_expert_names", "MMoEEncoder", "SoftmaxGate", "TaskSlot", "mmoe", "experts_encoder", "slot_heads"]


def gated_expert_names(task: str, shared: int, own: int) -> list[str]:
    """The names of the experts a task's gate weighs, shared ones first: ``shared 0``, …, then ``{task} 0``, …."""
    return [f"shared {e}" for e in range(shared)] + [f"{task} {e}" for e in range(own)]


@dataclass(frozen=True)
class GateReading:
    """A task's gate at one level of gated experts, on a batch of ``B`` samples: ``weights`` ``(B, n)`` over the
    ``n`` experts it weighs (``experts``, their names), and those experts' ``outputs`` ``(B, n, ...)`` on the task's input."""

    experts: list[str]
    weights: Tensor
    outputs: Tensor


class SoftmaxGate(nn.Linear):
    """``(B, F) -> (B, n)``: softmax of a linear map of the features, MMoE's and CGC's gate."""

    def forward(self, features: Tensor) -> Tensor:
        return torch.softmax(super().forward(features), dim=-1)


class MMoEEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: for each of ``tasks``, its gate's mixture of the shared experts and its own.

    With a ``trunk``, the experts and the gates read the trunk's features, flattened to ``(B, F)``;
    without one, the experts read the input itself and the gates the flattened input ``(B, F)``.
    ``make_expert()`` builds one expert (its output is flattened to ``(B, C)``). There are ``n_experts``
    shared experts and ``own_experts`` more per task, seen by that task's gate only (CGC; MMoE has none).
    ``make_gate(F, n)`` builds a task's gate, a module ``(B, F) -> (B, n)`` of weights over its ``n``
    experts, shared ones first (:class:`SoftmaxGate` by default).
    """

    def __init__(
        self, tasks: Sequence[str], features: int, make_expert: Callable[[], nn.Module], n_experts: int = 4, trunk: nn.Module | None = None,
        own_experts: int = 0, make_gate: Callable[[int, int], nn.Module] = SoftmaxGate,
    ) -> None:
        super().__init__()
        if n_experts + own_experts < 1 or n_experts < 0 or own_experts < 0 or not tasks:
            raise ValueError(f"a mixture of experts needs at least one expert per task and one task, got {n_experts} shared experts, "
                             f"{own_experts} per task and tasks {list(tasks)}")
        self.task_order = list(tasks)
        self.trunk = trunk
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.own_experts = nn.ModuleDict({task: nn.ModuleList(make_expert() for _ in range(own_experts)) for task in tasks} if own_experts else {})
        self.gates = nn.ModuleDict({task: make_gate(features, n_experts + own_experts) for task in tasks})

    def forward(self, x: Inputs) -> Tensor:
        return torch.stack(self.mixtures(x)[0], dim=1)

    def mixtures(self, x: Inputs) -> tuple[list[Tensor], list[Tensor]]:
        """Each task's mixture ``(B, C)`` and its gate's weights ``(B, n)`` over its experts, shared ones first."""
        mixtures, weights = [], []
        for experts, gate in self._gated(x):
            mixtures.append(torch.einsum("be,bec->bc", gate, experts))
            weights.append(gate)
        return mixtures, weights

    def _gated(self, x: Inputs) -> list[tuple[Tensor, Tensor]]:
        """Per task: the outputs ``(B, n, C)`` of the experts it sees, shared ones first, and its gate's weights ``(B, n)``."""
        if self.trunk is None:
            inputs, features = x, x.flatten(1)
        else:
            inputs = features = self.trunk(x).flatten(1)
        shared = torch.stack([expert(inputs).flatten(1) for expert in self.experts], dim=1) if len(self.experts) else None  # (B, S, C)
        gated = []
        for task in self.task_order:
            experts = shared
            if self.own_experts:
                own = torch.stack([expert(inputs).flatten(1) for expert in self.own_experts[task]], dim=1)
                experts = own if shared is None else torch.cat([shared, own], dim=1)  # (B, n, C)
            gated.append((experts, self.gates[task](features)))
        return gated

    def expert_names(self, task: str) -> list[str]:
        """The experts ``task``'s gate weighs, in its order (:func:`gated_expert_names`)."""
        return gated_expert_names(task, len(self.experts), len(self.own_experts[task]) if self.own_experts else 0)

    def gate_readings(self, x: Inputs) -> dict[str, dict[str, GateReading]]:
        """The gates on ``x``: one level, ``{"experts": {task: GateReading}}``."""
        return {"experts": {task: GateReading(self.expert_names(task), gate, experts)
                            for task, (experts, gate) in zip(self.task_order, self._gated(x))}}

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's gate and own experts: trained on its own loss, never shared."""
        own = {task: [(f"gates.{task}.{name}", p) for name, p in self.gates[task].named_parameters()] for task in self.task_order}
        for task, experts in self.own_experts.items():
            own[task] += [(f"own_experts.{task}.{name}", p) for name, p in experts.named_parameters()]
        return own


class TaskSlot(nn.Module):
    """Selects task ``index``'s representation ``Z[:, index]`` from an MMoE's ``(B, T, C)`` output."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, z: Tensor) -> Tensor:
        return z[:, self.index]


def experts_encoder(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int, expert_hidden: Sequence[int], experts: Literal["mlp", "backbone"], *,
    architecture: str, encoder_class: type[MMoEEncoder] = MMoEEncoder, **encoder_options,
) -> tuple[MMoEEncoder, int]:
    """An ``encoder_class`` (:class:`MMoEEncoder`) whose experts are MLPs on the backbone as a trunk (``experts="mlp"``)
    or fresh backbones on the input (``"backbone"``), and the width ``C`` of one expert's output; errors name ``architecture``."""
    names = [t.name for t in tasks]
    if n_experts < 0 or n_experts + encoder_options.get("own_experts", 0) < 1:
        raise ValueError(f"{architecture}: each task's gate needs at least one expert, got n_experts={n_experts}"
                         + (f" shared and own_experts={encoder_options['own_experts']}" if "own_experts" in encoder_options else ""))
    if not expert_hidden or any(int(width) < 1 for width in expert_hidden):
        raise ValueError(f"{architecture}: expert_hidden, the widths of an expert's layers, must be one or more positive widths, got {tuple(expert_hidden)}")
    if experts == "mlp":
        features = math.prod(backbone.shape)
        return encoder_class(names, features, lambda: mlp_encoder(features, expert_hidden), n_experts, backbone.make(), **encoder_options), expert_hidden[-1]
    if experts == "backbone":
        if backbone.inputs is None:
            raise ValueError(f"{architecture}: experts='backbone' gates on the flattened input, which the {backbone.name} backbone's named inputs are not; "
                             "use experts='mlp'")
        return encoder_class(names, math.prod(backbone.inputs), backbone.make, n_experts, **encoder_options), math.prod(backbone.shape)
    raise ValueError(f"{architecture}: experts must be 'mlp' or 'backbone', not {experts!r}")


def slot_heads(tasks: Sequence[Task], width: int) -> dict[str, nn.Module]:
    """A linear head per task on its slot ``Z[:, t]`` of width ``width``."""
    return {t.name: nn.Sequential(TaskSlot(i), nn.Linear(width, t.out_features)) for i, t in enumerate(tasks)}


def mmoe(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int = 4, expert_hidden: Sequence[int] = (64,), experts: Literal["mlp", "backbone"] = "mlp"
) -> MultiTaskModel:
    """An MMoE of ``n_experts`` experts on ``backbone`` (see the module docstring) with a linear head per task on its slot."""
    encoder, width = experts_encoder(tasks, backbone, n_experts, expert_hidden, experts, architecture="mmoe")
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, width))
