"""A task-routed sparse mixture of experts: each task's router sends every sample to its top k experts (M3ViT's
multi-gate routing; Shazeer et al.'s top-k gate), and only those experts run on it.

Task ``t``'s router reads the features ``x`` (``(B, F)``) and keeps its ``k`` largest logits ``ℓ = W_t x``:
``g_t(x) = softmax over the kept logits`` (0 on every other expert), and ``z_t = Σ_e g_{t,e}(x) f_e(x)``. An
expert runs only on the samples some task routed to it, so the compute per sample is at most ``T·k`` of the
``n`` experts (``k`` when the tasks agree), not ``n``. With ``noisy=True``, in training the logits get
M3ViT's noise, ``ℓ + ε · (softplus(W'_t x) + 0.01)`` with ``ε ~ N(0, 1)``, which spreads the load early on;
evaluation is noise-free. The experts are built as MMoE's are (``experts="mlp"`` on the backbone as a
trunk, ``"backbone"`` fresh backbones on the input).

Two ways to condition the routing on the task (M3ViT's two): ``router="per_task"`` (default, "multi-gate"),
a router of its own per task as above; ``router="task_conditioned"``, one router shared by the tasks that
reads the features with the task's one-hot code, ``ℓ = W [x ; e_t] + b = W_x x + w_t + b``: the task moves the
logits by a learned vector of its own, so changing only the task changes the experts chosen.

Not applied yet: M3ViT's load-balancing loss (``CV²`` of the experts' importance and load): the model
contract has no auxiliary loss. With one expert and ``k = 1`` every task's representation is that
expert's output: hard sharing with the expert as the encoder (a law in ``tests/test_experts.py``).

The per-task routers are task-specific parameters; the shared router is a shared parameter (the column
``w_t`` of its weight gets gradient from task ``t`` only, but it is one tensor with the rest). The probes
see the trunk, the experts and a shared router. The routing reads out as the gates do (``expert_gates``:
utilisation, ownership, dead experts).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import MMoEEncoder, experts_encoder, slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["TopKGate", "TaskConditionedGate", "TaskRoutedEncoder", "task_moe"]

ROUTERS = ("per_task", "task_conditioned")


class TopKGate(nn.Module):
    """``(B, F) -> (B, n)``: a softmax over the ``k`` largest of ``n`` logits, 0 elsewhere; noisy in training if asked."""

    def __init__(self, features: int, n: int, k: int = 2, noisy: bool = False) -> None:
        super().__init__()
        if not 1 <= k <= n:
            raise ValueError(f"task_moe: k (the experts each sample goes to) must be between 1 and the {n} experts, got {k}")
        self.k = k
        self.logits = nn.Linear(features, n)
        self.noise = nn.Linear(features, n) if noisy else None

    def forward(self, features: Tensor) -> Tensor:
        logits = self.logits(features)
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(self.noise(features)) + 0.01)
        kept = logits.topk(self.k, dim=-1)
        return torch.zeros_like(logits).scatter(-1, kept.indices, torch.softmax(kept.values, dim=-1))


class TaskConditionedGate(nn.Module):
    """``(B, F) -> (B, n)``: a ``router`` (a :class:`TopKGate` on ``F + n_tasks`` inputs) shared by the tasks,
    reading the features with task ``index``'s one-hot code, ``[x ; e_t]``."""

    def __init__(self, router: TopKGate, index: int, n_tasks: int) -> None:
        super().__init__()
        self.router, self.index, self.n_tasks = router, index, n_tasks

    def forward(self, features: Tensor) -> Tensor:
        code = F.one_hot(torch.full((len(features),), self.index, device=features.device), self.n_tasks).to(features.dtype)
        return self.router(torch.cat([features, code], dim=1))


class TaskRoutedEncoder(MMoEEncoder):
    """:class:`MMoEEncoder` with top-k routers (``k``, ``noisy``), per task or one ``task_conditioned`` router
    shared by the tasks, whose experts run only on the samples routed to them."""

    def __init__(
        self, tasks: Sequence[str], features: int, make_expert, n_experts: int = 4, trunk: nn.Module | None = None, *, k: int = 1,
        noisy: bool = False, router: str = "per_task",
    ) -> None:
        if router not in ROUTERS:
            raise ValueError(f"task_moe: router must be one of {list(ROUTERS)}, not {router!r}")
        if router == "per_task":
            make_gate = partial(TopKGate, k=k, noisy=noisy)
        else:
            shared = TopKGate(features + len(tasks), n_experts, k, noisy)
            indices = iter(range(len(tasks)))  # MMoEEncoder makes one gate per task, in the tasks' order
            make_gate = lambda _features, _n: TaskConditionedGate(shared, next(indices), len(tasks))  # noqa: E731
        super().__init__(tasks, features, make_expert, n_experts, trunk, make_gate=make_gate)
        self.router = router

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's router, or nothing when the tasks share one."""
        return super().task_parameters() if self.router == "per_task" else {task: [] for task in self.task_order}

    def _gated(self, x: Inputs) -> list[tuple[Tensor, Tensor]]:
        if self.trunk is None:
            inputs, features = x, x.flatten(1)
        else:
            inputs = features = self.trunk(x).flatten(1)
        gates = [self.gates[task](features) for task in self.task_order]  # each (B, n), k non-zero per row
        routed = torch.stack(gates).gt(0).any(0)  # (B, n): some task sends the sample to the expert
        outputs = []
        for e, expert in enumerate(self.experts):
            rows = routed[:, e].nonzero().squeeze(1)
            out = expert(inputs[rows]).flatten(1)
            outputs.append(out.new_zeros(len(routed), out.shape[1]).index_copy(0, rows, out))
        experts = torch.stack(outputs, dim=1)  # (B, n, C), zero where the expert did not run
        return [(experts, gate) for gate in gates]


def task_moe(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int = 4, k: int = 1, noisy: bool = False, expert_hidden: Sequence[int] = (64,),
    experts: Literal["mlp", "backbone"] = "mlp", router: Literal["per_task", "task_conditioned"] = "per_task",
) -> MultiTaskModel:
    """A task-routed sparse MoE of ``n_experts`` on ``backbone``, each task's routing (``router``) sending a sample to ``k`` of them."""
    if n_experts < 1:
        raise ValueError(f"task_moe: n_experts must be at least 1, got {n_experts}")
    encoder, width = experts_encoder(tasks, backbone, n_experts, expert_hidden, experts, architecture="task_moe",
                                     k=k, noisy=noisy, router=router, encoder_class=TaskRoutedEncoder)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, width))
