"""Align-LoRA (Liu et al. 2025, "Align, don't divide"): one shared LoRA and a loss that aligns the tasks' representations.

The adapter is :mod:`~workbench.models.peft.lora`'s shared LoRA (``peft``'s parametrisation, saved and loaded as
``peft`` folders); the training loss adds, through the training loop's auxiliary losses, the official
repository's alignment term on the outputs ``A x`` of every LoRA down-projection::

    L = Σ_t L_t + λ · mean_layers mean_{task pairs (i, j)} ½ [KL(N_i ‖ N_j) + KL(N_j ‖ N_i)]

``N_t`` is the diagonal Gaussian fitted to task ``t``'s samples' features ``(N_t, S, r)`` at each sequence
position and rank (mean and unbiased variance over the samples, ``+1e-8``); a KL sums over the ``r`` ranks and
averages over the ``S`` positions (a vector encoder's features are one position). Task ``t``'s samples are the
rows the batch labels for it (a :class:`~workbench.tasks.TaskInputs`: one dataset per task, or missing
labels); where every task is labelled on the same samples the groups coincide and the term is zero, so
Align-LoRA trains as the shared LoRA does. Where two groups' sequences are padded to different lengths,
their common first positions are compared; a task with fewer than two samples in the batch is left out.
The term costs one more forward and backward of the adapted part per step (its own forward, so that
every method's forwards stay untouched). Defaults: the shared LoRA's (rank 8, α 8), ``λ = 0.2`` (the released
``train.py``; its trainer's default is 0.01) and the released divergence (the alternative, a multi-kernel
MMD, is not offered).

The probes of shared gradients see the LoRA: the tasks' conflict inside it, on their losses alone (the
alignment term is the model's, not a task's).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.peft.adapted import AdaptedEncoder, adapt
from workbench.models.peft.layer import check_dropout, check_rank
from workbench.models.peft.lora import DEFAULT_ADAPTER, LoRAInit, LoRALinear, check_init
from workbench.models.peft.targets import Targets
from workbench.tasks import MultiTaskModel, Task, TaskInputs

__all__ = ["RecordingLoRALinear", "AlignedEncoder", "align_lora", "symmetric_gaussian_kl"]

_EPSILON = 1e-8


class RecordingLoRALinear(LoRALinear):
    """A shared :class:`~workbench.models.peft.lora.LoRALinear` that appends its down-projection's output ``A x``
    ``(..., r)`` to ``recorded`` while that is a list."""

    recorded: list[Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        down = self.lora_A[DEFAULT_ADAPTER](self.lora_dropout(x))
        if self.recorded is not None:
            self.recorded.append(down)
        return self.base_layer(x) + self.lora_B[DEFAULT_ADAPTER](down) * self.scaling


def _diagonal_kl(mean_p: Tensor, var_p: Tensor, mean_q: Tensor, var_q: Tensor) -> Tensor:
    """``KL(N(mean_p, var_p) ‖ N(mean_q, var_q))`` of diagonal Gaussians ``(S, r)``: summed over ``r``, averaged over ``S``."""
    var_p, var_q = var_p + _EPSILON, var_q + _EPSILON
    return (0.5 * (var_q.log() - var_p.log() + var_p / var_q + (mean_q - mean_p) ** 2 / var_q - 1)).sum(-1).mean()


def symmetric_gaussian_kl(p: Tensor, q: Tensor) -> Tensor:
    """The official alignment divergence of two groups of features ``(N_p, S, r)`` and ``(N_q, S', r)`` (or ``(N, r)``):
    the mean of the two KLs between their diagonal Gaussians per position, on the first ``min(S, S')`` positions."""
    if p.dim() == 2:
        p, q = p.unsqueeze(1), q.unsqueeze(1)
    length = min(p.shape[1], q.shape[1])
    p, q = p[:, :length].flatten(1, -2), q[:, :length].flatten(1, -2)
    moments_p, moments_q = (p.mean(0), p.var(0)), (q.mean(0), q.var(0))
    return (_diagonal_kl(*moments_p, *moments_q) + _diagonal_kl(*moments_q, *moments_p)) / 2


class AlignedEncoder(AdaptedEncoder):
    """An :class:`~workbench.models.peft.adapted.AdaptedEncoder` of shared recording LoRAs whose ``auxiliary_loss`` is
    Align-LoRA's alignment term times ``align_weight`` (see the module docstring)."""

    def __init__(self, base: nn.Module, tasks: Sequence[str], per_task: bool, align_weight: float = 0.2) -> None:
        super().__init__(base, tasks, per_task)
        self.align_weight = align_weight

    def task_features(self, x: TaskInputs, tasks: Sequence[str]) -> dict[str, list[Tensor]]:
        """``{task: [A x of its labelled samples at each LoRA layer]}`` for the ``tasks`` routed in ``x``; the encoder runs once per group."""
        layers = [layer for layer in self.adapted_layers().values() if isinstance(layer, RecordingLoRALinear)]
        by_group = []
        for group in x.groups:
            for layer in layers:
                layer.recorded = []
            try:
                self.base(group)
                by_group.append([layer.recorded[-1] for layer in layers])
            finally:
                for layer in layers:
                    layer.recorded = None
        features = {}
        for task in tasks:
            group, index = x.rows[task]
            features[task] = [f if index is None else f[index] for f in by_group[group]]
        return features

    def auxiliary_loss(self, x, targets: Mapping[str, Tensor]) -> Tensor | None:
        """``align_weight`` times the alignment term of the tasks labelled in ``targets``; ``None`` when there is nothing to align
        (every task labelled on the same samples, fewer than two tasks with two samples, or a weight of zero)."""
        if not isinstance(x, TaskInputs) or not self.align_weight:
            return None
        tasks = [t for t in targets if t in x.rows and x.labelled(t) >= 2]
        if len({x.rows[t][0] for t in tasks}) == 1 and all(x.rows[t][1] is None for t in tasks):
            return None  # one group, every task labelled on all of it: the groups coincide
        pairs = list(itertools.combinations(tasks, 2))
        if not pairs:
            return None
        features = self.task_features(x, tasks)
        per_layer = [sum(symmetric_gaussian_kl(features[a][layer], features[b][layer]) for a, b in pairs) / len(pairs)
                     for layer in range(len(features[tasks[0]]))]
        return self.align_weight * torch.stack(per_layer).mean()


def align_lora(
    tasks: Sequence[Task], backbone: Backbone, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0, rslora: bool = False,
    init: LoRAInit = "kaiming", align_weight: float = 0.2, targets: Targets = None,
) -> MultiTaskModel:
    """One LoRA shared by the tasks, as :func:`~workbench.models.peft.lora.lora` builds it, and Align-LoRA's alignment term
    of weight ``align_weight`` (``λ``) added to the training loss (see the module docstring)."""
    check_init("align_lora", init)
    check_dropout("align_lora", dropout)
    if isinstance(align_weight, bool) or not isinstance(align_weight, (int, float)) or not align_weight >= 0:
        raise ValueError(f"align_lora: align_weight must be a non-negative number, got {align_weight!r}")

    def make(name: str, base: nn.Linear) -> RecordingLoRALinear:
        check_rank("align_lora", name, base, rank)
        return RecordingLoRALinear(base, rank, alpha, dropout, rslora, init)

    def encoder(base: nn.Module, names: Sequence[str], per_task: bool) -> AlignedEncoder:
        return AlignedEncoder(base, names, per_task, float(align_weight))

    return adapt(tasks, backbone, "align_lora", make, targets=targets, per_task=False, encoder=encoder)
