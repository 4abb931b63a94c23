"""TaskExpert (Ye & Xu 2023): memorial mixtures of experts on a backbone's stages, under the model contract.

TaskExpert puts a "memorial MoE" at several backbone layers: experts decompose the layer's feature into
task-generic features, each task's dynamic gate mixes them per sample, and each task's feature memory is read as
one more expert and rewritten at every layer; the last memory feeds the task's head. The paper's gate form,
expert count and memory initialisation are unverified here (its code was not read); what follows is what this
module implements.

The backbone is the shared trunk, cut into its ``L`` stages (:meth:`~workbench.models.Backbone.make_stages`),
``h_l = s_l(h_{l-1})`` from ``h_{-1} = x``. At each stage ``l`` of ``at`` (every stage by default; stages above
the last of ``at`` serve nothing and are not built), ``n`` experts ``f^l_e``, MLPs of widths ``expert_hidden``
ending at ``C``, read the stage's output flattened, ``u_l = vec(h_l)`` ``(B, F_l)``, as MMoE's experts read the
trunk (a spatial map is flattened, not pooled, keeping the positions a task may need). Task ``t``'s gate at stage
``l`` is a softmax of a linear map of ``u_l`` over those experts and the task's memory ``m_t``, and its mixture
rewrites the memory::

    first stage of at:  m_t ← Σ_e g^l_{t,e}(u_l) f^l_e(u_l),                       g^l_t = softmax(W^l_t u_l + c^l_t)  (n weights)
    later stages:       m_t ← Σ_e g^l_{t,e}(u_l) f^l_e(u_l) + g^l_{t,m}(u_l) m_t,   g^l_t (n + 1 weights, the memory's last)
    z_t = m_t   (B, C) after the last stage of at

Following the paper: experts on several stages' features, per-task per-sample gates, the memory as an extra
expert rewritten at every stage, the last memory as the representation. The workbench's choices: the memory is
initialised by the first gated stage's mixture (that gate has no memory to weigh), the gates read the stage's
features (not the memory), softmax gates, MLP experts on flattened features. With one stage in ``at`` it is
MMoE on that stage's output; with the memory's weight 0 at every later stage, MMoE on the last one's.

Under the contract ``Z`` is ``(B, T, C)`` and head ``t`` reads slot ``t``. The trunk and every stage's experts
serve every task and are the shared parameters the gradient engine, the conflict probe, the affinity probes
and the aggregators see; a task's gates are its own (they write only its memory). The ``expert_gates`` probe
reads one level per stage of ``at`` (:meth:`TaskExpertEncoder.gate_readings`), the memory named ``{task}
memory``, which counts as the task's own in ``own_share``: how much a task leans on its memory rather than on
the stage's shared experts. The saliency probes read ``∂L_t/∂Z``, non-zero in slot ``t`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone, stage_shapes
from workbench.models.encoders import mlp_encoder
from workbench.models.mmoe import GateReading, SoftmaxGate, gated_expert_names, slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["TaskExpertEncoder", "task_expert"]


class TaskExpertEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: the stages up to the last of ``at``, a memorial MoE after each stage of ``at``.

    ``features[l]`` is the flattened width ``F_l`` of stage ``l``'s output; ``experts["l"]`` holds stage ``l``'s
    experts, ``gates[task]["l"]`` the task's gate there.
    """

    def __init__(self, tasks: Sequence[str], stages: Sequence[nn.Module], at: Sequence[int], features: Sequence[int], n_experts: int,
                 expert_hidden: Sequence[int]) -> None:
        super().__init__()
        self.task_order = list(tasks)
        self.at = sorted(at)
        self.stages = nn.ModuleList(stages[: self.at[-1] + 1])
        self.experts = nn.ModuleDict({str(l): nn.ModuleList(mlp_encoder(features[l], expert_hidden) for _ in range(n_experts)) for l in self.at})
        self.gates = nn.ModuleDict({t: nn.ModuleDict({str(l): SoftmaxGate(features[l], n_experts + (i > 0)) for i, l in enumerate(self.at)})
                                    for t in tasks})

    def forward(self, x: Inputs) -> Tensor:
        return self._levels(x)[0]

    def _levels(self, x: Inputs) -> tuple[Tensor, dict[str, dict[str, GateReading]]]:
        """``Z`` and, per stage of ``at``, each task's gate reading."""
        h, memory, readings = x, {}, {}
        for l, stage in enumerate(self.stages):
            h = stage(h)
            if str(l) not in self.experts:
                continue
            u = h.flatten(1)
            shared = torch.stack([expert(u) for expert in self.experts[str(l)]], dim=1)  # (B, n, C)
            level = readings[f"stage {l}"] = {}
            for t in self.task_order:
                experts = torch.cat([shared, memory[t][:, None]], dim=1) if memory else shared  # (B, n [+ 1], C)
                gate = self.gates[t][str(l)](u)
                level[t] = GateReading(self._names(t, with_memory=bool(memory)), gate, experts)
            memory = {t: torch.einsum("be,bec->bc", level[t].weights, level[t].outputs) for t in self.task_order}
        return torch.stack([memory[t] for t in self.task_order], dim=1), readings

    def _names(self, task: str, with_memory: bool) -> list[str]:
        return gated_expert_names(task, len(self.experts[str(self.at[0])]), 0) + ([f"{task} memory"] if with_memory else [])

    def expert_names(self, task: str) -> list[str]:
        """What ``task``'s gates weigh: ``shared 0``, … (each stage's own experts) and, past the first stage, ``{task} memory``."""
        return self._names(task, with_memory=len(self.at) > 1)

    def gate_readings(self, x: Inputs) -> dict[str, dict[str, GateReading]]:
        """The gates on ``x``, one level per stage of ``at``: ``{"stage l": {task: GateReading}, …}``."""
        return self._levels(x)[1]

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's gates: they write its memory only."""
        return {t: [(f"gates.{t}.{name}", p) for name, p in self.gates[t].named_parameters()] for t in self.task_order}


def task_expert(tasks: Sequence[Task], backbone: Backbone, n_experts: int = 4, expert_hidden: Sequence[int] = (64,),
                at: Sequence[int] | None = None) -> MultiTaskModel:
    """TaskExpert on ``backbone``'s stages: ``n_experts`` MLP experts of widths ``expert_hidden`` and a gate per task at each
    stage of ``at`` (every stage by default), each task's memory its representation; a linear head per task."""
    if backbone.inputs is None:
        raise ValueError(f"task_expert reads each stage's width from a forward pass on one input shape, which the {backbone.name} "
                         "backbone's named inputs are not")
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
        raise ValueError(f"task_expert: n_experts must be a positive integer, got {n_experts!r}")
    if not expert_hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in expert_hidden):
        raise ValueError(f"task_expert: expert_hidden must be one or more positive widths, got {expert_hidden!r}")
    stages = backbone.make_stages("task_expert")
    depth = len(stages)
    at = list(range(depth)) if at is None else list(at) if isinstance(at, Sequence) else at
    if not isinstance(at, list) or not at or len(set(at)) != len(at) or any(isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < depth for l in at):
        raise ValueError(f"task_expert: at must name distinct stages of the backbone's {depth}, 0 to {depth - 1}, and at least one; got {at}")
    shapes = stage_shapes(stages, backbone.inputs)
    features = [math.prod(shape) for shape in shapes[1:]]
    encoder = TaskExpertEncoder([t.name for t in tasks], stages, at, features, n_experts, tuple(expert_hidden))
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, expert_hidden[-1]))
