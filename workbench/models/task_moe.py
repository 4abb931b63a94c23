"""A task-routed sparse mixture of experts: each task's router sends every sample to its top k experts (M3ViT's
multi-gate routing; Shazeer et al.'s top-k gate), and only those experts run on it.

Task ``t``'s router reads the features ``x`` (``(B, F)``) and keeps its ``k`` largest logits ``ℓ = W_t x``:
``g_t(x) = softmax over the kept logits`` (0 on every other expert), and ``z_t = Σ_e g_{t,e}(x) f_e(x)``. An
expert runs only on the samples some task routed to it, so the compute per sample is at most ``T·k`` of the
``n`` experts (``k`` when the tasks agree), not ``n``. With ``noisy=True``, in training the logits get
M3ViT's noise, ``ℓ + ε · (softplus(W'_t x) + 0.01)`` with ``ε ~ N(0, 1)``, which spreads the load early on;
evaluation is noise-free. The experts are built as MMoE's are (``experts="mlp"`` on the backbone as a
trunk, ``"backbone"`` fresh backbones on the input).

Not applied yet: M3ViT's load-balancing loss (``CV²`` of the experts' importance and load): the model
contract has no auxiliary loss. The task-conditioned variant (one router reading the sample with a task
embedding) is not here either. With one expert and ``k = 1`` every task's representation is that
expert's output: hard sharing with the expert as the encoder (a law in ``tests/test_experts.py``).

The routers are task-specific parameters; the probes see the trunk and the experts. The routing reads
out as the gates do (``expert_gates``: utilisation, ownership, dead experts).
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

__all__ = ["TopKGate", "TaskRoutedEncoder", "task_moe"]


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


class TaskRoutedEncoder(MMoEEncoder):
    """:class:`MMoEEncoder` with top-k routers, whose experts run only on the samples routed to them."""

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
    experts: Literal["mlp", "backbone"] = "mlp",
) -> MultiTaskModel:
    """A task-routed sparse MoE of ``n_experts`` on ``backbone``, each task's router sending a sample to ``k`` of them."""
    if n_experts < 1:
        raise ValueError(f"task_moe: n_experts must be at least 1, got {n_experts}")
    encoder, width = experts_encoder(tasks, backbone, n_experts, expert_hidden, experts, architecture="task_moe",
                                     make_gate=partial(TopKGate, k=k, noisy=noisy), encoder_class=TaskRoutedEncoder)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, width))
