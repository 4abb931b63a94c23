"""MultiLoRA (Wang et al. 2023): LoRA scaled horizontally, with a changed initialisation.

For a frozen linear layer ``W0``, ``n`` LoRA modules in parallel with learnable output scales::

    h = W0 x + b + s · Σ_i diag(c_i) B_i A_i dropout(x),    s = α / r

``A_i`` (``r × d_in``) and ``B_i`` (``d_out × r``) start kaiming-uniform (``a = √5``) and the scales
``c_i`` (``d_out``) at zero, so the zero start sits in the scales, not in ``B``. The paper reports that
this spreads the update over more singular directions (less dominance of the top ones). Source: the
MultiLoRA baseline of the MTL-LoRA repository (third-party to the paper); the paper's defaults of
``n`` are unverified, ``n = 3`` here. Everything is shared: the probes see every ``A_i``, ``B_i``, ``c_i``.
With ``n = 1``, ``c_1 = 1`` it is plain LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.peft.adapted import adapt
from workbench.models.peft.layer import AdaptedLinear, check_count, check_dropout, check_rank
from workbench.models.peft.targets import Targets
from workbench.tasks import MultiTaskModel, Task

__all__ = ["MultiLoRALinear", "multilora"]


class MultiLoRALinear(AdaptedLinear):
    """``base_layer(x) + s · Σ_i c_i ⊙ B_i A_i dropout(x)`` over ``n`` parallel LoRA modules (see the module docstring)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, n_modules: int = 3, dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        self.rank, self.scaling = rank, alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(n_modules, rank, self.in_features))
        self.lora_B = nn.Parameter(torch.empty(n_modules, self.out_features, rank))
        for i in range(n_modules):
            nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B[i], a=math.sqrt(5))
        self.lora_scaling = nn.Parameter(torch.zeros(n_modules, self.out_features))

    def forward(self, x: Tensor) -> Tensor:
        down = torch.einsum("...d,nrd->...nr", self.lora_dropout(x), self.lora_A)
        up = torch.einsum("...nr,nor,no->...o", down, self.lora_B, self.lora_scaling)
        return self.base_layer(x) + up * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, n_modules={self.lora_A.shape[0]}"


def multilora(
    tasks: Sequence[Task], backbone: Backbone, rank: int = 8, alpha: float = 8.0, n_modules: int = 3, dropout: float = 0.0,
    targets: Targets = None,
) -> MultiTaskModel:
    """MultiLoRA of ``n_modules`` parallel LoRAs of ``rank`` on the ``targets`` linear layers of the backbone's trainable part,
    everything else frozen, shared by the tasks; a linear head per task."""
    check_count("multilora", "n_modules", n_modules)
    check_dropout("multilora", dropout)

    def make(name: str, base: nn.Linear) -> MultiLoRALinear:
        check_rank("multilora", name, base, rank)
        return MultiLoRALinear(base, rank, alpha, n_modules, dropout)

    return adapt(tasks, backbone, "multilora", make, targets=targets, per_task=False)
