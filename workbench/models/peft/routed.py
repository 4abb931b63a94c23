"""Routed low-rank experts that need no task id: SMoRA (each rank an expert) and MoLoRA (a sparse mixture of LoRAs).

Both put ``E`` low-rank experts of rank ``r_e`` on a frozen linear layer and route every token to ``k`` of them::

    h = W0 x + b + s · Σ_e g_e(x) B_e A_e dropout(x),    A_e: r_e × d_in,  B_e: d_out × r_e (zero at start),  s = α / (E · r_e)

with ``g(x)`` zero outside the ``k`` experts chosen for the token. ``s`` divides α by the total rank, as
LoRA's α / r does.

- **MoLoRA / MING-MoE** (Liao et al. 2024), ``molora``: ``E`` LoRA experts of rank ``r_e``; a linear router
  ``W_r x``, softmax over the top-``k`` logits (Shazeer et al.'s top-k gating). The expert count, ``k`` and
  the router's form of the paper are unverified: ``E = 4``, ``k = 2``, ``r_e = 4`` here.
- **SMoRA** (Zhao et al. 2025, "Each rank could be an expert"), ``smora``: one LoRA of rank ``E`` whose every
  rank-1 component is an expert (``r_e = 1``); a linear score ``W_g x`` per rank, the top ``k`` of
  ``W_g x + β`` chosen, gate ``sigmoid(W_g x)`` on them. The bias ``β`` serves the balance only: the
  training forwards of a step (with gradients on) count each rank's choices, and after the optimizer's step
  (:meth:`RoutedLoRALinear.after_optimizer_step`, which the training loop calls)
  ``β_e += u · sign(1 / E − load_e)``, ``load_e`` the share of the step's choices that went to rank ``e``
  (loss-free balancing, as the paper describes it; every token position counts, padding too: the layer
  does not see the attention mask). Within a step the routing is a function of the
  parameters and ``β`` alone, so the gradient engine, the probes and a second forward agree. The score's
  activation, ``k`` and ``u`` are unverified: sigmoid, ``E = 16``, ``k = 4``, ``u = 10⁻³`` here.

The experts are computed densely (every expert on every token, weighted by gates that are zero outside
the top ``k``): the same output as dispatching tokens, and cheaper at these ranks. Everything is shared
(the router, the experts): the probes see it all, so conflict is measured over the routed experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.peft.adapted import adapt
from workbench.models.peft.layer import AdaptedLinear, check_count, check_dropout, check_rank
from workbench.models.peft.targets import Targets
from workbench.tasks import MultiTaskModel, Task

__all__ = ["RoutedLoRALinear", "molora", "smora"]

Gating = Literal["softmax", "balanced_sigmoid"]


class RoutedLoRALinear(AdaptedLinear):
    """``base_layer(x) + s · Σ_e g_e(x) B_e A_e dropout(x)`` over ``experts`` low-rank experts, ``k`` per token
    (see the module docstring for the two gatings)."""

    def __init__(self, base_layer: nn.Linear, experts: int, expert_rank: int, k: int, alpha: float, gating: Gating,
                 update_rate: float = 1e-3, dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        if gating not in ("softmax", "balanced_sigmoid"):
            raise ValueError(f"RoutedLoRALinear: gating must be 'softmax' or 'balanced_sigmoid', not {gating!r}")
        self.k, self.gating, self.update_rate = k, gating, update_rate
        self.scaling = alpha / (experts * expert_rank)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(experts, expert_rank, self.in_features))
        for e in range(experts):
            nn.init.kaiming_uniform_(self.lora_A[e], a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(experts, self.out_features, expert_rank))
        self.router = nn.Linear(self.in_features, experts, bias=False)
        self.register_buffer("balance_bias", torch.zeros(experts))
        self.register_buffer("pending_load", torch.zeros(experts))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Move the balance bias by the sign of each expert's load error over the step's choices, and start counting anew."""
        total = self.pending_load.sum()
        if self.gating == "balanced_sigmoid" and total > 0:
            self.balance_bias += self.update_rate * torch.sign(1 / self.experts - self.pending_load / total)
        self.pending_load.zero_()

    @property
    def experts(self) -> int:
        return self.lora_A.shape[0]

    def gates(self, x: Tensor) -> Tensor:
        """``(..., E)``: each token's gate over the experts, zero outside its top ``k``; a training forward with gradients on
        counts the choices for the balance (balanced sigmoid)."""
        scores = self.router(x)
        if self.gating == "softmax":
            top, chosen = scores.topk(self.k, dim=-1)
            return torch.zeros_like(scores).scatter(-1, chosen, torch.softmax(top, dim=-1))
        chosen = (scores.detach() + self.balance_bias).topk(self.k, dim=-1).indices
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.pending_load.index_add_(0, chosen.reshape(-1), torch.ones(chosen.numel(), device=x.device))
        return torch.zeros_like(scores).scatter(-1, chosen, torch.sigmoid(scores.gather(-1, chosen)))

    def forward(self, x: Tensor) -> Tensor:
        dropped = self.lora_dropout(x)
        down = torch.einsum("...d,erd->...er", dropped, self.lora_A)
        up = torch.einsum("...er,eor,...e->...o", down, self.lora_B, self.gates(x))
        return self.base_layer(x) + up * self.scaling

    def extra_repr(self) -> str:
        return f"experts={self.experts}, expert_rank={self.lora_A.shape[1]}, k={self.k}, gating={self.gating!r}"


def _routed(tasks, backbone, scheme: str, experts: int, expert_rank: int, k: int, alpha: float, gating: Gating, update_rate: float,
            dropout: float, targets: Targets) -> MultiTaskModel:
    check_count(scheme, "k", k)
    check_dropout(scheme, dropout)

    def make(name: str, base: nn.Linear) -> RoutedLoRALinear:
        if scheme == "smora":  # the experts are the ranks of one LoRA
            check_rank(scheme, name, base, experts)
        else:
            check_count(scheme, "experts", experts)
            check_rank(scheme, name, base, expert_rank, option="expert_rank")
        if k > experts:
            raise ValueError(f"{scheme}: k = {k} routes each token to more experts than the {experts} there are")
        return RoutedLoRALinear(base, experts, expert_rank, k, alpha, gating, update_rate, dropout)

    return adapt(tasks, backbone, scheme, make, targets=targets, per_task=False)


def molora(
    tasks: Sequence[Task], backbone: Backbone, experts: int = 4, expert_rank: int = 4, k: int = 2, alpha: float = 16.0, dropout: float = 0.0,
    targets: Targets = None,
) -> MultiTaskModel:
    """MoLoRA: ``experts`` LoRA experts of ``expert_rank`` on each targeted linear layer, ``k`` per token by softmax top-k
    routing, shared by the tasks (see the module docstring)."""
    return _routed(tasks, backbone, "molora", experts, expert_rank, k, alpha, "softmax", 0.0, dropout, targets)


def smora(
    tasks: Sequence[Task], backbone: Backbone, rank: int = 16, k: int = 4, alpha: float = 16.0, update_rate: float = 1e-3, dropout: float = 0.0,
    targets: Targets = None,
) -> MultiTaskModel:
    """SMoRA: one LoRA of ``rank`` whose ranks are experts, ``k`` per token by a score and a balancing bias, shared by the
    tasks (see the module docstring)."""
    return _routed(tasks, backbone, "smora", rank, 1, k, alpha, "balanced_sigmoid", update_rate, dropout, targets)
