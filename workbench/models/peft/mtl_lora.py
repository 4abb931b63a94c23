"""MTL-LoRA (Yang et al. 2024): task-specific transforms inside one shared low-rank space.

For task ``t`` and a frozen linear layer ``W0``, after the official ``mlora.py``::

    h_t = W0 x + b + s · B_t Λ_t A dropout(x),    B_t = Σ_k softmax(w_t / τ)_k B_k,    s = α / r

``A`` (``r × d_in``, kaiming-uniform) is shared by the tasks, and so are the ``K`` up-projections ``B_k``
(``d_out × r``, zero at start, so the adapter starts as a no-op). Task ``t`` holds its ``Λ_t`` (``r × r``
from the identity, or its diagonal from ones with ``diagonal=True``) and its mixing logits ``w_t``
(``K``, uniform on ``±1/√K``, what kaiming-uniform with ``a = √5`` draws for a ``T × K`` matrix).
With ``K = 1`` and ``Λ_t = I`` it is plain LoRA with ``A`` and ``B_1``. The official LLaMA-2 script
uses ``K = 3``, ``τ = 0.1`` and ``(r, α) = (8, 16)``; these are the defaults.

The task id is needed at training and at inference: every task's representation comes from the
batch passed through its own transform (:class:`~workbench.models.peft.adapted.AdaptedEncoder`). The probes
of shared gradients see ``A`` and the ``B_k``: conflict inside the shared low-rank space; each
task's ``Λ_t`` and ``w_t`` are its own parameters, trained on its loss only.
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

__all__ = ["MTLLoRALinear", "mtl_lora"]


class MTLLoRALinear(AdaptedLinear):
    """``base_layer(x) + s · B_t Λ_t A dropout(x)`` on each task's block of rows (see the module docstring)."""

    task_keyed = ("lora_lambdas", "lora_B_w")

    def __init__(self, base_layer: nn.Linear, tasks: Sequence[str], rank: int, alpha: float, up_projections: int = 3,
                 temperature: float = 0.1, diagonal: bool = False, dropout: float = 0.0) -> None:
        super().__init__(base_layer, tasks)
        self.rank, self.temperature, self.diagonal = rank, temperature, diagonal
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(up_projections, self.out_features, rank))
        bound = 1 / math.sqrt(up_projections)
        self.lora_lambdas = nn.ParameterDict({t: nn.Parameter(torch.ones(rank) if diagonal else torch.eye(rank)) for t in self.tasks})
        self.lora_B_w = nn.ParameterDict({t: nn.Parameter(torch.empty(up_projections).uniform_(-bound, bound)) for t in self.tasks})

    def task_up_projection(self, task: str) -> Tensor:
        """``B_t`` ``(d_out, r)``: the shared up-projections mixed by the task's softmax weights."""
        mix = torch.softmax(self.lora_B_w[task] / self.temperature, dim=0)
        return torch.einsum("k,kor->or", mix, self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        down = self.lora_dropout(x) @ self.lora_A.T  # (T·B, ..., r): A is shared, so once for every task's rows
        blocks = []
        for task, block in zip(self.tasks, self.task_blocks(down)):
            transform = torch.diag(self.lora_lambdas[task]) if self.diagonal else self.lora_lambdas[task]
            blocks.append(block @ transform.T @ self.task_up_projection(task).T)
        return result + torch.stack(blocks).flatten(0, 1) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, up_projections={self.lora_B.shape[0]}, temperature={self.temperature}, diagonal={self.diagonal}, tasks={list(self.tasks)}"


def mtl_lora(
    tasks: Sequence[Task], backbone: Backbone, rank: int = 8, alpha: float = 16.0, up_projections: int = 3, temperature: float = 0.1,
    diagonal: bool = False, dropout: float = 0.0, targets: Targets = None,
) -> MultiTaskModel:
    """MTL-LoRA on the ``targets`` linear layers of the backbone's trainable part (see the module docstring), everything else
    frozen; a linear head per task on its own representation."""
    check_count("mtl_lora", "up_projections", up_projections)
    if not temperature > 0:
        raise ValueError(f"mtl_lora: temperature must be positive, got {temperature!r}")
    check_dropout("mtl_lora", dropout)
    names = [t.name for t in tasks]

    def make(name: str, base: nn.Linear) -> MTLLoRALinear:
        check_rank("mtl_lora", name, base, rank)
        return MTLLoRALinear(base, names, rank, alpha, up_projections, temperature, diagonal, dropout)

    return adapt(tasks, backbone, "mtl_lora", make, targets=targets, per_task=True)
