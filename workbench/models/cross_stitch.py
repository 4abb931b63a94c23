"""Cross-stitch networks (Misra et al. 2016) under the model contract.

One copy of the backbone per task, cut into its stages (:meth:`~workbench.models.Backbone.make_stages`).
After every stage but the last, task ``i``'s next input is a linear mix of all the tasks' outputs of that
stage, ``h̃_i = Σ_j α^l_{ij} h_j``, one learned scalar per (stitch ``l``, task ``i``, task ``j``); the
last stage's output of column ``t``, flattened, is task ``t``'s representation. ``α`` starts at
``alpha_self`` on the diagonal and shares the rest of each row evenly, ``(1 − alpha_self) / (T − 1)``
(0.9 and 0.1 for two tasks, as in Vandenhende et al.'s code), so every row sums to 1. With ``α = I``
the columns are independent networks, one per task; with one task (a single-task baseline) it is the
backbone itself.

LibMTL's port keeps one scalar per (stitch, source task ``j``), the same for every target ``i``, so
every column reads the same mix; here that is the special case ``α^l_{ij} = c^l_j`` (``tests/test_libmtl.py``
loads LibMTL's weights into it and gets LibMTL's outputs).

Under the contract ``Z`` is ``(B, T, C)``, one representation per task, and head ``t`` reads slot ``t``.
Every stage but the last reaches all the tasks through the stitches, so those and ``α`` are the shared
parameters that the gradient engine, the conflict probe and the aggregators see; the last stage of
column ``t`` serves task ``t`` only and is its own. The saliency probe reads each task's own
representation (``∂L_t/∂Z`` is non-zero in slot ``t`` only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["CrossStitchEncoder", "cross_stitch"]


class CrossStitchEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: a column of ``make_stages()`` per task, stitched after every stage but the last.

    ``stitches`` holds ``α``, shape ``(L - 1, T, T)`` for ``L`` stages: ``stitches[l, i, j]`` weighs task ``j``'s
    output of stage ``l`` in task ``i``'s input to stage ``l + 1``.
    """

    def __init__(self, tasks: Sequence[str], make_stages: Callable[[], list[nn.Module]], alpha_self: float = 0.9) -> None:
        super().__init__()
        self.task_order = list(tasks)
        self.columns = nn.ModuleDict({task: nn.ModuleList(make_stages()) for task in tasks})
        depth = len(self.columns[self.task_order[0]])
        if depth < 2:
            raise ValueError(f"cross_stitch stitches between stages; the backbone has {depth} stage (it needs two layers with parameters, "
                             "or a stages function that cuts it in two or more)")
        n = len(tasks)
        alpha = torch.full((n, n), (1.0 - alpha_self) / (n - 1) if n > 1 else 0.0)
        alpha.fill_diagonal_(float(alpha_self) if n > 1 else 1.0)
        self.stitches = nn.Parameter(alpha.repeat(depth - 1, 1, 1))

    def forward(self, x: Inputs) -> Tensor:
        columns = [self.columns[task] for task in self.task_order]
        h = [x] * len(columns)
        for stage in range(len(columns[0])):
            h = [column[stage](inputs) for column, inputs in zip(columns, h)]
            if stage < len(self.stitches):
                h = list(torch.einsum("ij,j...->i...", self.stitches[stage], torch.stack(h)))
        return torch.stack([z.flatten(1) for z in h], dim=1)

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The last stage of each task's column: after the last stitch it serves that task only."""
        last = str(len(self.stitches))
        return {task: [(f"columns.{task}.{last}.{name}", p) for name, p in self.columns[task][-1].named_parameters()] for task in self.task_order}


def cross_stitch(tasks: Sequence[Task], backbone: Backbone, alpha_self: float = 0.9) -> MultiTaskModel:
    """A column of ``backbone`` per task, cross-stitched after every stage but the last, a linear head per task."""
    if not 0.0 <= alpha_self <= 1.0:
        raise ValueError(f"cross_stitch: alpha_self, each task's initial weight on its own column, must lie in [0, 1], got {alpha_self}")
    encoder = CrossStitchEncoder([t.name for t in tasks], lambda: backbone.make_stages("cross_stitch"), alpha_self)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, math.prod(backbone.shape)))
