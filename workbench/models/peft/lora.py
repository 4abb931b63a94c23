"""LoRA (Hu et al. 2021) as ``peft`` parametrises it: one shared adapter, or one per task.

For a frozen linear layer ``W0`` (``d_out × d_in``, bias ``b``) and input ``x``::

    h = W0 x + b + s · B A dropout(x),    A: r × d_in,  B: d_out × r,  s = α / r  (α / √r with rslora)

``A`` starts kaiming-uniform (``a = √5``, ``nn.Linear``'s default; ``init="gaussian"``: N(0, 1/r²)) and
``B`` at zero, so the adapter starts as a no-op. The modules and their names are ``peft``'s
(``base_layer``, ``lora_A.<adapter>``, ``lora_B.<adapter>``): a shared LoRA is ``peft``'s adapter
``"default"``, and task ``t``'s LoRA in ``task_lora`` is adapter ``t``, which
:mod:`workbench.models.peft.peft_format` saves and loads as ``peft`` folders.

In ``lora`` the adapter is shared: the gradient engine, the conflict and affinity
probes and every aggregator see the adapter's ``A`` and ``B`` in every targeted layer: the tasks'
conflict *inside the adapter*. In ``task_lora`` each task has its own LoRA in every
targeted layer and nothing is shared: the tasks interact through no trainable parameter (the probes
of shared gradients have nothing to read), the parameter-efficient counterpart of single-task training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.peft.adapted import adapt
from workbench.models.peft.layer import AdaptedLinear, check_dropout, check_rank
from workbench.models.peft.targets import Targets
from workbench.tasks import MultiTaskModel, Task

__all__ = ["LoRALinear", "lora", "task_lora", "lora_scaling"]

LoRAInit = Literal["kaiming", "gaussian"]
DEFAULT_ADAPTER = "default"
"""``peft``'s name of an adapter that has no other (the shared LoRA's)."""


def lora_scaling(rank: int, alpha: float, rslora: bool) -> float:
    """``s = α / r``, or ``α / √r`` with rank-stabilised LoRA (``rslora``), as ``peft`` computes it."""
    return alpha / (math.sqrt(rank) if rslora else rank)


class LoRALinear(AdaptedLinear):
    """``base_layer(x) + s · lora_B[a](lora_A[a](dropout(x)))``, ``a`` the one shared adapter or each row block's task."""

    task_keyed = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 init: LoRAInit = "kaiming", tasks: Sequence[str] = ()) -> None:
        super().__init__(base_layer, tasks)
        check_init("LoRALinear", init)
        adapters = self.tasks or (DEFAULT_ADAPTER,)
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scaling = lora_scaling(rank, alpha, rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.ModuleDict({a: nn.Linear(self.in_features, rank, bias=False) for a in adapters})
        self.lora_B = nn.ModuleDict({a: nn.Linear(rank, self.out_features, bias=False) for a in adapters})
        for a in adapters:
            if init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A[a].weight, a=math.sqrt(5))
            else:
                nn.init.normal_(self.lora_A[a].weight, std=1 / rank)
            nn.init.zeros_(self.lora_B[a].weight)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if not self.tasks:
            return result + self.lora_B[DEFAULT_ADAPTER](self.lora_A[DEFAULT_ADAPTER](self.lora_dropout(x))) * self.scaling
        blocks = self.task_blocks(x)
        delta = torch.stack([self.lora_B[t](self.lora_A[t](self.lora_dropout(block))) for t, block in zip(self.tasks, blocks)])
        return result + delta.flatten(0, 1) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, rslora={self.rslora}, adapters={list(self.lora_A)}"


def lora(
    tasks: Sequence[Task], backbone: Backbone, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0, rslora: bool = False,
    init: LoRAInit = "kaiming", targets: Targets = None,
) -> MultiTaskModel:
    """One LoRA of ``rank`` shared by the tasks (``alpha``, ``dropout``, ``rslora``, ``init`` as in ``peft``; defaults ``peft``'s)
    on the ``targets`` linear layers of the backbone's trainable part (:mod:`workbench.models.peft.targets`), everything else
    frozen; a linear head per task."""
    return _lora(tasks, backbone, "lora", rank, alpha, dropout, rslora, init, targets, per_task=False)


def task_lora(
    tasks: Sequence[Task], backbone: Backbone, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0, rslora: bool = False,
    init: LoRAInit = "kaiming", targets: Targets = None,
) -> MultiTaskModel:
    """One LoRA per task, as :func:`lora` builds one; nothing shared but the frozen backbone."""
    return _lora(tasks, backbone, "task_lora", rank, alpha, dropout, rslora, init, targets, per_task=True)


def _lora(tasks, backbone, scheme: str, rank, alpha, dropout, rslora, init, targets, *, per_task: bool) -> MultiTaskModel:
    check_init(scheme, init)
    check_dropout(scheme, dropout)
    names = [t.name for t in tasks] if per_task else []

    def make(name: str, base: nn.Linear) -> LoRALinear:
        check_rank(scheme, name, base, rank)
        return LoRALinear(base, rank, alpha, dropout, rslora, init, names)

    return adapt(tasks, backbone, scheme, make, targets=targets, per_task=per_task)


def check_init(scheme: str, init: str) -> None:
    """Refuse an initialisation of ``A`` other than ``"kaiming"`` or ``"gaussian"``, naming the scheme."""
    if init not in ("kaiming", "gaussian"):
        raise ValueError(f"{scheme}: init must be 'kaiming' or 'gaussian', not {init!r}")
