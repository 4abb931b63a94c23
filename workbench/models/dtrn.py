"""The deep task-specific bottom representation network (DTRN, Liu et al. 2023) under the model contract.

DTRN gives every task its own bottom representation: a task-specific interest module whose parameters a
hypernetwork generates from a task embedding, then a task-specific representation refinement module, an
SENet-like reweighting of each feature embedding per task. The paper's exact equations and sizes are
unverified here (no code was found); what follows is what this module implements.

The backbone is a shared trunk; ``h = vec(trunk(x))`` ``(B, F)``. Task ``t`` has a learned embedding ``e_t``
``(d,)``, and a shared hypernetwork ``H`` generates the parameters of its bottom layer, ``(W_t, b_t) = H(e_t)``,
an affine map of ``e_t`` whose weight part is low-rank::

    W_t = W_0 + U diag(M e_t) Vᵀ   (F, D),    b_t = b_0 + N e_t   (D,)
    r_t = ReLU(h W_t + b_t)   (B, D)

with ``W_0`` ``(F, D)``, ``U`` ``(F, k)``, ``V`` ``(D, k)``, ``M`` ``(k, d)``, ``b_0`` ``(D,)``, ``N`` ``(D, d)``
(``D = width``, ``d = embedding``, ``k = rank``; :meth:`DTRNEncoder.generated` returns ``(W_t, b_t)``). The
forward pass computes ``h W_0 + ((h U) ⊙ M e_t) Vᵀ``, the same product without forming ``W_t``. The refinement
then cuts ``r_t`` into ``G = groups`` groups of ``D / G`` units (standing for the paper's feature embeddings),
squeezes each to its mean ``s_t`` ``(B, G)``, and excites them with task ``t``'s own two-layer gate::

    a_t = σ(A_{t,2} ReLU(A_{t,1} s_t + c_{t,1}) + c_{t,2})   (B, G),   z_t = r_t ⊙ a_t (each group's units by its weight)

``A_{t,1}`` ``(G / reduction, G)`` (integer division), ``A_{t,2}`` ``(G, G / reduction)``
(:meth:`DTRNEncoder.refinement_weights`). Following the paper: a hypernetwork from a task embedding to
task-specific bottom parameters, then SENet-like per-task reweighting. The workbench's choices: one bottom layer
on the trunk's features where the paper extracts interest per behaviour sequence (the workbench's problems have
none); the affine low-rank generator; groups of units for feature embeddings; a linear head per task on
``z_t``, where the paper may put MMoE or PLE on top.

Under the contract ``Z`` is ``(B, T, D)`` and head ``t`` reads slot ``t``. The trunk and the hypernetwork serve
every task and are the shared parameters the gradient engine, the conflict probe, the affinity probes and the
aggregators see; a task's embedding and its refinement gate are its own (its embedding reaches only its bottom
layer). The conflict probe then measures how the tasks, each through its generated layer, pull on the trunk and
on the generator; the saliency probes read ``∂L_t/∂Z``, non-zero in slot ``t`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["DTRNEncoder", "Hypernetwork", "Refinement", "dtrn"]


class Hypernetwork(nn.Module):
    """``e (d,) -> (W (F, D), b (D,))``: ``W = W_0 + U diag(M e) Vᵀ``, ``b = b_0 + N e`` (see the module docstring)."""

    def __init__(self, features: int, width: int, embedding: int, rank: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(features)  # nn.Linear's scale on F inputs
        self.base = nn.Parameter(torch.empty(features, width).uniform_(-bound, bound))  # W_0
        self.base_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))  # b_0
        self.left = nn.Parameter(torch.empty(features, rank).uniform_(-bound, bound))  # U
        self.right = nn.Parameter(torch.empty(width, rank).uniform_(-1 / math.sqrt(rank), 1 / math.sqrt(rank)))  # V
        self.scales = nn.Linear(embedding, rank, bias=False)  # M
        self.bias = nn.Linear(embedding, width, bias=False)  # N

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        return self.base + (self.left * self.scales(e)) @ self.right.T, self.base_bias + self.bias(e)

    def project(self, h: Tensor, e: Tensor) -> Tensor:
        """``h W + b`` ``(B, D)`` for the parameters ``e`` generates, without forming ``W``."""
        return h @ self.base + ((h @ self.left) * self.scales(e)) @ self.right.T + self.base_bias + self.bias(e)


class Refinement(nn.Module):
    """``r (B, D) -> r`` reweighted by group: ``a = σ(A_2 ReLU(A_1 s))`` ``(B, G)``, ``s`` the means of ``G`` groups of ``D / G`` units."""

    def __init__(self, groups: int, hidden: int) -> None:
        super().__init__()
        self.groups = groups
        self.squeeze = nn.Linear(groups, hidden)
        self.excite = nn.Linear(hidden, groups)

    def weights(self, r: Tensor) -> Tensor:
        """Each group's weight ``(B, G)``, in ``(0, 1)``."""
        s = r.reshape(r.shape[0], self.groups, -1).mean(-1)
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(s))))

    def forward(self, r: Tensor) -> Tensor:
        return (r.reshape(r.shape[0], self.groups, -1) * self.weights(r)[..., None]).reshape(r.shape)


class DTRNEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, D)``: the trunk, each task's generated bottom layer, its refinement."""

    def __init__(self, tasks: Sequence[str], trunk: nn.Module, features: int, width: int, embedding: int, rank: int, groups: int,
                 reduction: int) -> None:
        super().__init__()
        self.task_order = list(tasks)
        self.trunk = trunk
        self.generator = Hypernetwork(features, width, embedding, rank)
        self.embeddings = nn.ParameterDict({t: nn.Parameter(torch.randn(embedding)) for t in tasks})
        self.refinements = nn.ModuleDict({t: Refinement(groups, groups // reduction) for t in tasks})

    def forward(self, x: Inputs) -> Tensor:
        bottoms = self.bottoms(x)
        return torch.stack([self.refinements[t](bottoms[t]) for t in self.task_order], dim=1)

    def bottoms(self, x: Inputs) -> dict[str, Tensor]:
        """Each task's bottom representation ``r_t = ReLU(h W_t + b_t)`` ``(B, D)``, before its refinement."""
        h = self.trunk(x).flatten(1)
        return {t: torch.relu(self.generator.project(h, self.embeddings[t])) for t in self.task_order}

    def generated(self, task: str) -> tuple[Tensor, Tensor]:
        """The bottom layer's parameters the hypernetwork generates for ``task``: ``W_t`` ``(F, D)`` and ``b_t`` ``(D,)``."""
        return self.generator(self.embeddings[task])

    def refinement_weights(self, x: Inputs) -> dict[str, Tensor]:
        """Each task's refinement weights ``a_t`` ``(B, G)`` on ``x``."""
        return {t: self.refinements[t].weights(r) for t, r in self.bottoms(x).items()}

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's embedding and refinement gate."""
        return {t: [(f"embeddings.{t}", self.embeddings[t])] + [(f"refinements.{t}.{name}", p) for name, p in self.refinements[t].named_parameters()]
                for t in self.task_order}


def dtrn(tasks: Sequence[Task], backbone: Backbone, width: int = 64, embedding: int = 8, rank: int = 8, groups: int = 8,
         reduction: int = 2) -> MultiTaskModel:
    """DTRN on ``backbone`` as a trunk: bottom layers of ``width`` units generated from task embeddings of size ``embedding``
    through a rank-``rank`` generator, refined over ``groups`` groups by gates of ``groups // reduction`` hidden units; a linear head per task."""
    for option, value in {"width": width, "embedding": embedding, "rank": rank, "groups": groups, "reduction": reduction}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"dtrn: {option} must be a positive integer, got {value!r}")
    if width % groups:
        raise ValueError(f"dtrn: groups={groups} must divide width={width}, each group being width / groups units")
    if reduction > groups:
        raise ValueError(f"dtrn: reduction={reduction} above groups={groups} leaves the refinement gate no hidden unit (groups // reduction)")
    encoder = DTRNEncoder([t.name for t in tasks], backbone.make(), math.prod(backbone.shape), width, embedding, rank, groups, reduction)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, width))
