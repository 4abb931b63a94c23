"""Customized gate control (CGC, Tang et al. 2020, the single level of PLE) under the model contract.

``S`` shared experts and ``E_t`` experts of task ``t``'s own; task ``t``'s softmax gate reads the features and
weighs the shared experts and its own, ``z_t = Σ_{e ∈ S ∪ E_t} g_{t,e}(x) f_e(x)``, which feeds its linear head.
With no experts of its own per task it is MMoE. The experts are built as MMoE's are (``experts="mlp"`` on the
backbone as a trunk, ``"backbone"`` fresh backbones on the input, as LibMTL's CGC builds them).

A task's own experts and its gate are its task-specific parameters: the gradient engine, the conflict
probe and the aggregators see the trunk and the shared experts only, where the tasks meet. The
representation ``Z`` is ``(B, T, C)``, one mixture per task, so the saliency probe reads each task's own
mixture (non-zero in its own slot only), as for MMoE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from workbench.models.backbone import Backbone
from workbench.models.mmoe import experts_encoder, slot_heads
from workbench.tasks import MultiTaskModel, Task

__all__ = ["cgc"]


def cgc(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int = 2, own_experts: int = 1, expert_hidden: Sequence[int] = (64,),
    experts: Literal["mlp", "backbone"] = "mlp",
) -> MultiTaskModel:
    """CGC with ``n_experts`` shared experts and ``own_experts`` per task on ``backbone``, a linear head per task on its mixture."""
    if own_experts < 1:
        raise ValueError(f"cgc: own_experts must be at least 1 (with none it is mmoe), got {own_experts}")
    if n_experts < 0:
        raise ValueError(f"cgc: n_experts (shared) must be at least 0, got {n_experts}")
    encoder, width = experts_encoder(tasks, backbone, n_experts, expert_hidden, experts, architecture="cgc", own_experts=own_experts)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, width))
