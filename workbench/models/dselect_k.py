"""DSelect-k (Hazimeh et al. 2021): a mixture of experts whose per-task gate selects k experts, differentiably.

The gate of task ``t`` reads the features ``x`` (``(B, F)``). With ``n`` experts, ``m = ⌈log₂ n⌉`` bits and ``k``
selectors, per sample: ``Z = W_z x`` of shape ``(k, m)`` and ``a = W_a x`` of length ``k``. The smooth step

    S(u) = 0 for u ≤ −γ/2,  1 for u ≥ γ/2,  else −2u³/γ³ + 3u/(2γ) + 1/2

turns each row of ``Z`` into a soft binary code: selector ``i`` puts ``r_i(j) = Π_b [S(Z_ib) if bit b of j is 1
else 1 − S(Z_ib)]`` on expert ``j`` (bits most significant first, ``j < n``). The weights are
``w = Σ_i softmax(a)_i r_i``, and ``z_t = Σ_j w_j f_j(x)``. Once every ``|Z_ib| ≥ γ/2`` each selector is one
expert, so at most ``k`` experts carry weight. Initialisation as the paper's code: ``W_z ~ U(±γ/100)``,
``W_a ~ U(±0.05)`` (weights and biases). The experts are built as MMoE's are (``experts="mlp"`` on the
backbone as a trunk, ``"backbone"`` fresh backbones on the input, as LibMTL builds them).

Not applied: the paper's training regulariser (``1e-6 ×`` the selectors' entropy, plus ``Σ_i 1/Σ_j r_i(j)``
when ``n`` is not a power of two, which keeps the selectors on codes that name an expert): the model
contract has no auxiliary loss yet. With ``n`` a power of two every ``r_i`` sums to 1 and the second term
is constant. LibMTL's port always evaluates ``S`` with ``γ = 1`` (its ``kgamma`` only scales the
initialisation); here ``gamma`` is used in both, so the two agree at ``gamma=1``.

The gates are task-specific parameters; the probes see the trunk and the experts, as for MMoE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import experts_encoder, slot_heads
from workbench.tasks import MultiTaskModel, Task

__all__ = ["DSelectGate", "smooth_step", "dselect_k"]


def smooth_step(u: Tensor, gamma: float = 1.0) -> Tensor:
    """DSelect-k's cubic smooth step (see the module docstring), elementwise."""
    cubic = -2 / gamma**3 * u**3 + 3 / (2 * gamma) * u + 0.5
    return torch.where(u <= -gamma / 2, torch.zeros_like(u), torch.where(u >= gamma / 2, torch.ones_like(u), cubic))


class DSelectGate(nn.Module):
    """``(B, F) -> (B, n)``: DSelect-k's weights over ``n`` experts from ``k`` selectors (see the module docstring)."""

    def __init__(self, features: int, n: int, k: int = 2, gamma: float = 1.0) -> None:
        super().__init__()
        if not 1 <= k <= n:
            raise ValueError(f"dselect_k: k (the selectors) must be between 1 and the {n} experts, got {k}")
        if gamma <= 0:
            raise ValueError(f"dselect_k: gamma must be positive, got {gamma}")
        self.k, self.bits, self.gamma = k, math.ceil(math.log2(n)), gamma
        self.selectors = nn.Linear(features, k * self.bits)  # Z
        self.selector_weights = nn.Linear(features, k)  # a
        nn.init.uniform_(self.selectors.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.selectors.bias, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.selector_weights.weight, -0.05, 0.05)
        nn.init.uniform_(self.selector_weights.bias, -0.05, 0.05)
        codes = [[bool(j >> (self.bits - 1 - b) & 1) for b in range(self.bits)] for j in range(n)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool).reshape(n, self.bits), persistent=False)  # (n, m)

    def selections(self, features: Tensor) -> Tensor:
        """``r``: each selector's weights over the experts, ``(B, k, n)``."""
        steps = smooth_step(self.selectors(features).view(len(features), self.k, 1, self.bits), self.gamma)  # (B, k, 1, m)
        return torch.where(self.codes, steps, 1 - steps).prod(-1)

    def forward(self, features: Tensor) -> Tensor:
        return torch.einsum("bk,bkn->bn", torch.softmax(self.selector_weights(features), dim=-1), self.selections(features))


def dselect_k(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int = 4, k: int = 2, gamma: float = 1.0, expert_hidden: Sequence[int] = (64,),
    experts: Literal["mlp", "backbone"] = "mlp",
) -> MultiTaskModel:
    """DSelect-k with ``n_experts`` shared experts on ``backbone``, each task's gate choosing ``k``, a linear head per task."""
    if n_experts < 1:
        raise ValueError(f"dselect_k: n_experts must be at least 1, got {n_experts}")
    encoder, width = experts_encoder(tasks, backbone, n_experts, expert_hidden, experts, architecture="dselect_k",
                                     make_gate=partial(DSelectGate, k=k, gamma=gamma))
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, width))
