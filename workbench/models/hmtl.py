"""A hierarchical multi-task model (HMTL, Sanh et al. 2019) under the model contract.

HMTL stacks one encoder per task, the lower tasks supervising the lower encoders (NER, then entity mention
detection, then relation extraction, then coreference), each higher encoder reading the base embeddings and the
output of the encoder below. Here the backbone is cut into its ``L`` stages ``s_0 … s_{L-1}``
(:meth:`~workbench.models.Backbone.make_stages`) and ``levels`` puts each task ``t`` at the stage ``l_t`` whose
output supervises it (stage indices from 0)::

    h_0 = s_0(x),   h_l = s_l(h_{l-1} + P_l vec(x))  (l ≥ 1),   z_t = vec(h_{l_t})

By default the tasks spread in order over the stages, ``l_{t_i} = ⌊i (L − 1) / (T − 1)⌋`` for the ``i``-th of
``T`` tasks (the first at the lowest stage, the last at the top; a single task at the top). Stages above the
highest level serve no task and are not built.

The shortcut (``shortcut=True``, HMTL's own): each stage above the first also reads the input embedding, which
here is the flattened input ``vec(x)`` (HMTL's higher encoders read the same base word embeddings as the lowest
one, not the lowest encoder's output). HMTL concatenates, ``[e ; h]``; through a stage whose first layer is
linear, ``W_h h + W_e e``. Here the shortcut enters as ``s_l(h + P_l e)``, the first layer then computing
``W_h h + (W_h P_l) e``: the same as the concatenation whenever ``W_h`` has full row rank (``W_h P_l`` can then
be any ``W_e``), and every stage stays the backbone's own, unrebuilt, on any backbone that can be cut (a CNN's
stage included, where ``P_l`` maps ``vec(x)`` onto the stage's whole input map). ``P_l`` is a bias-free linear
map ``(F_x,) -> (F_{l-1},)``, reshaped to the stage input's shape, ``F_x × F_{l-1}`` weights, initialised at 0,
so that an untrained model is the plain hierarchy. Without the shortcut, ``P_l = 0`` and is absent.

Under the contract ``Z`` is ``(B, T, C)``: slot ``t`` holds ``z_t`` (of the width ``C_t`` of its stage's
flattened output) zero-padded to the widest, ``C = max_t C_t``, and head ``t`` reads slot ``t``'s first ``C_t``
features (:class:`Leading`), so no head weight sits on padding. Stage ``l`` (and ``P_l``) serves the tasks at
level ``l`` or above: where that is one task only it is that task's own; otherwise it is shared, and so is the
first stage always (the base every task's path goes through). With every task at the top and no shortcut it is
hard sharing. What the probes then measure: the conflict and affinity probes see the stages shared by several
tasks, a low task pulling only on the stages up to its level; the saliency probes read ``∂L_t/∂Z``, non-zero in
slot ``t``'s first ``C_t`` features only.

Training: HMTL samples one task per step, with probability proportional to its number of training batches; the
workbench's loop trains every task on every step and does not sample tasks, so a run here is the joint
objective on the same hierarchy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.models.backbone import Backbone, stage_shapes
from workbench.models.mmoe import TaskSlot
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["HMTLEncoder", "Leading", "default_levels", "hmtl"]


class HMTLEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: the stages up to the highest level, task ``t`` read at stage ``levels[t]``.

    ``shapes[l]`` is one sample's shape at the input of stage ``l`` and ``shapes[l + 1]`` at its output
    (:func:`~workbench.models.backbone.stage_shapes`); ``shortcut`` adds the projections ``P_l`` of the flattened input ``(F_x,)`` onto the
    input of every stage ``l ≥ 1``, as ``shortcuts["l"]``.
    """

    def __init__(self, tasks: Sequence[str], stages: Sequence[nn.Module], levels: Mapping[str, int], shapes: Sequence[tuple[int, ...]],
                 shortcut: bool = True) -> None:
        super().__init__()
        self.task_order = list(tasks)
        self.levels = {task: levels[task] for task in self.task_order}
        top = max(self.levels.values())
        self.stages = nn.ModuleList(stages[: top + 1])
        self.widths = {task: math.prod(shapes[level + 1]) for task, level in self.levels.items()}
        self.width = max(self.widths.values())
        inputs = math.prod(shapes[0])
        self.shortcuts = nn.ModuleDict({str(l): _zero_linear(inputs, math.prod(shapes[l])) for l in range(1, top + 1)}) if shortcut else None

    def forward(self, x: Inputs) -> Tensor:
        outputs = self.stage_outputs(x)
        return torch.stack([F.pad(outputs[self.levels[t]].flatten(1), (0, self.width - self.widths[t])) for t in self.task_order], dim=1)

    def stage_outputs(self, x: Inputs) -> list[Tensor]:
        """Every built stage's output ``h_l``, ``(B, *shapes[l + 1])``, lowest first."""
        e = x.flatten(1) if self.shortcuts is not None else None
        h, outputs = x, []
        for l, stage in enumerate(self.stages):
            if l and self.shortcuts is not None:
                h = h + self.shortcuts[str(l)](e).reshape(h.shape)
            h = stage(h)
            outputs.append(h)
        return outputs

    def serving(self, stage: int) -> list[str]:
        """The tasks whose path goes through ``stage``: those at its level or above."""
        return [t for t in self.task_order if self.levels[t] >= stage]

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The stages above the first (and their shortcuts) that one task alone reads."""
        own: dict[str, list[tuple[str, nn.Parameter]]] = {t: [] for t in self.task_order}
        for l in range(1, len(self.stages)):
            serving = self.serving(l)
            if len(serving) == 1:
                own[serving[0]] += [(f"stages.{l}.{name}", p) for name, p in self.stages[l].named_parameters()]
                if self.shortcuts is not None:
                    own[serving[0]] += [(f"shortcuts.{l}.{name}", p) for name, p in self.shortcuts[str(l)].named_parameters()]
        return own


class Leading(nn.Module):
    """``(B, C) -> (B, width)``: the first ``width`` features of a zero-padded slot."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, z: Tensor) -> Tensor:
        return z[:, : self.width]


def _zero_linear(features: int, out: int) -> nn.Linear:
    layer = nn.Linear(features, out, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


def default_levels(tasks: Sequence[str], depth: int) -> dict[str, int]:
    """The tasks spread in order over ``depth`` stages: the ``i``-th of ``T`` at ``⌊i (depth − 1) / (T − 1)⌋``."""
    if len(tasks) == 1:
        return {tasks[0]: depth - 1}
    return {task: i * (depth - 1) // (len(tasks) - 1) for i, task in enumerate(tasks)}


def _check_levels(levels: object, tasks: list[str], depth: int) -> dict[str, int]:
    if not isinstance(levels, Mapping):
        raise ValueError(f"hmtl: levels maps each task to the stage that supervises it, {{task: stage}}; got {levels!r}")
    unknown, missing = sorted(set(levels) - set(tasks)), [t for t in tasks if t not in levels]
    if unknown:
        raise ValueError(f"hmtl: levels names unknown tasks {unknown}; the tasks are {tasks}")
    if missing:
        raise ValueError(f"hmtl: levels gives no stage to the tasks {missing}; give every task of {tasks} one")
    for task, level in levels.items():
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < depth:
            raise ValueError(f"hmtl: levels puts task {task!r} at stage {level!r}; the backbone has {depth} stages, 0 to {depth - 1}")
    return dict(levels)


def hmtl(tasks: Sequence[Task], backbone: Backbone, levels: Mapping[str, int] | None = None, shortcut: bool = True) -> MultiTaskModel:
    """The tasks in a hierarchy over ``backbone``'s stages (``levels``: ``{task: stage}``, spread in order by default),
    each stage above the first reading the input through a shortcut when ``shortcut``; a linear head per task."""
    if backbone.inputs is None:
        raise ValueError(f"hmtl reads each stage's width from a forward pass on one input shape, and its shortcut the flattened input, "
                         f"which the {backbone.name} backbone's named inputs are not")
    if not isinstance(shortcut, bool):
        raise ValueError(f"hmtl: shortcut must be True or False, got {shortcut!r}")
    names = [t.name for t in tasks]
    stages = backbone.make_stages("hmtl")
    levels = default_levels(names, len(stages)) if levels is None else _check_levels(levels, names, len(stages))
    shapes = stage_shapes(stages, backbone.inputs)
    encoder = HMTLEncoder(names, stages, levels, shapes, shortcut)
    heads = {t.name: nn.Sequential(TaskSlot(i), Leading(encoder.widths[t.name]), nn.Linear(encoder.widths[t.name], t.out_features))
             for i, t in enumerate(tasks)}
    return MultiTaskModel(encoder, tasks, heads=heads)
