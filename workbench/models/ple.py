"""Progressive layered extraction (PLE, Tang et al. 2020) under the model contract, as LibMTL builds it.

Every expert is a copy of the backbone cut into its ``L`` stages (:meth:`~workbench.models.Backbone.make_stages`):
``S`` shared experts and ``E_t`` of task ``t``'s own. Level ``l`` is CGC on stage ``l``: task ``t``'s input
``h_t`` (the sample ``x`` at level 0) goes through stage ``l`` of the shared experts and of its own, and its
softmax gate, which reads ``h_t`` flattened, mixes them into its next input,
``h_t ← Σ_{e ∈ S ∪ E_t} g^l_{t,e}(h_t) f^l_e(h_t)``. Task ``t``'s last ``h_t``, flattened, is its
representation. With one stage it is CGC with backbone experts.

This is LibMTL's variant (``tests/test_libmtl.py`` loads LibMTL's weights into it and gets its outputs): the
shared experts run on each task's input separately, and there is no shared module with a gate of its own
that the paper's figure shows between levels (whose exact form the paper leaves open).

Under the contract ``Z`` is ``(B, T, C)`` and head ``t`` reads slot ``t``. The shared experts are the shared
parameters that the gradient engine, the conflict probe and the aggregators see; a task's own experts
and its gates are its task-specific parameters. The saliency probe reads each task's own representation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone, stage_shapes
from workbench.models.mmoe import GateReading, SoftmaxGate, gated_expert_names, slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["PLEEncoder", "ple"]


class PLEEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: levels of gated experts, each expert a ``make_stages()`` copy.

    ``features[l]`` is the flattened width of a task's input to level ``l`` (what its gate reads).
    """

    def __init__(
        self, tasks: Sequence[str], make_stages: Callable[[], list[nn.Module]], features: Sequence[int], n_experts: int = 1, own_experts: int = 1,
    ) -> None:
        super().__init__()
        if n_experts < 0 or own_experts < 0 or n_experts + own_experts < 1:
            raise ValueError(f"ple needs at least one expert per task, got n_experts={n_experts} shared and own_experts={own_experts}")
        self.task_order = list(tasks)
        self.experts = nn.ModuleList(nn.ModuleList(make_stages()) for _ in range(n_experts))
        self.own_experts = nn.ModuleDict({task: nn.ModuleList(nn.ModuleList(make_stages()) for _ in range(own_experts)) for task in tasks})
        self.gates = nn.ModuleDict({task: nn.ModuleList(SoftmaxGate(width, n_experts + own_experts) for width in features) for task in tasks})

    def forward(self, x: Inputs) -> Tensor:
        return self._levels(x)[0]

    def _levels(self, x: Inputs) -> tuple[Tensor, dict[str, dict[str, GateReading]]]:
        """``Z`` and, per level, each task's gate reading."""
        h = {task: x for task in self.task_order}
        readings: dict[str, dict[str, GateReading]] = {}
        for level in range(len(self.gates[self.task_order[0]])):
            readings[f"level {level}"] = {}
            for task in self.task_order:
                experts = torch.stack([e[level](h[task]) for e in [*self.experts, *self.own_experts[task]]], dim=1)  # (B, n, ...)
                gate = self.gates[task][level](h[task].flatten(1))
                readings[f"level {level}"][task] = GateReading(self.expert_names(task), gate, experts)
                h[task] = torch.einsum("be,be...->b...", gate, experts)
        return torch.stack([h[task].flatten(1) for task in self.task_order], dim=1), readings

    def expert_names(self, task: str) -> list[str]:
        """The experts ``task``'s gates weigh, in their order (:func:`~workbench.models.mmoe.gated_expert_names`)."""
        return gated_expert_names(task, len(self.experts), len(self.own_experts[task]))

    def gate_readings(self, x: Inputs) -> dict[str, dict[str, GateReading]]:
        """The gates on ``x``, level by level: ``{"level 0": {task: GateReading}, …}``."""
        return self._levels(x)[1]

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's own experts and gates."""
        return {
            task: [(f"own_experts.{task}.{name}", p) for name, p in self.own_experts[task].named_parameters()]
            + [(f"gates.{task}.{name}", p) for name, p in self.gates[task].named_parameters()]
            for task in self.task_order
        }


def ple(tasks: Sequence[Task], backbone: Backbone, n_experts: int = 1, own_experts: int = 1) -> MultiTaskModel:
    """PLE with ``n_experts`` shared and ``own_experts`` per task, each a copy of ``backbone`` whose stages are its levels."""
    if backbone.inputs is None:
        raise ValueError(f"ple's gates read each level's input flattened, which the {backbone.name} backbone's named inputs are not")
    with torch.random.fork_rng():  # a throwaway copy, to read the widths, leaving the random state as it was
        widths = [math.prod(shape) for shape in stage_shapes(backbone.make_stages("ple"), backbone.inputs)[:-1]]
    encoder = PLEEncoder([t.name for t in tasks], lambda: backbone.make_stages("ple"), widths, n_experts, own_experts)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, math.prod(backbone.shape)))
