"""Rep-MTL (Wang et al. 2025): regularise the task saliency in the shared representation.

On top of any method's update, the gradient of

    λ_tsr · L_tsr + λ_csa · L_csa

where ``L_tsr`` is the mean entropy of the tasks' shares of the channel-mean saliency at every
position (task-specific saliency regulation: each position is pushed towards the task that pulls on
it most) and ``L_csa`` the InfoNCE loss that aligns each task's channel affinity map with the
sample's anchor over the batch (cross-task saliency alignment), both from
:mod:`workbench.probes.saliency`. The saliency ``S_t = ∂L_t/∂Z`` is taken with its graph kept
(a second-order term through the heads only), so the regulariser reaches the heads and, through
``Z``, the encoder.

With a loss-weighting base (equal weighting by default, as in the paper) the regulariser joins the
combined loss in one forward and one backward; with a gradient-aggregation base it is
backpropagated after the base's update, with a forward of its own. No official code was released:
this follows the paper's text; the temperature default (0.1) is the workbench's.

Both terms compare the tasks' saliency on the same sample, so they are taken over the samples of
the batch labelled for every task (of the tasks the step trains); on a batch per task, where no
sample is, Rep-MTL is its base method alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from workbench.probes.saliency import cross_task_alignment_loss, on_one_scale, representation_dims, share_entropy
from workbench.tasks import Inputs, check_finite, label_mask
from workbench.train.method import Method, StepOutcome
from workbench.train.scalarized import Scalarized

__all__ = ["RepMTL", "saliency_regulariser"]


def saliency_regulariser(
    model, x: Inputs, targets: Mapping[str, Tensor], lambda_tsr: float, lambda_csa: float, temperature: float
) -> tuple[Tensor, Tensor]:
    """The task losses ``(T,)`` and ``λ_tsr · L_tsr + λ_csa · L_csa`` (a scalar), both with their graphs."""
    representations = model.represent_groups(x)
    losses = model.losses_from_outputs(model.routed_outputs(representations, x), targets)
    check_finite(losses)
    names = model.task_names
    saliency = torch.stack([
        torch.cat(torch.autograd.grad(losses[t], representations, create_graph=True, retain_graph=True, allow_unused=True, materialize_grads=True))
        for t in names
    ])  # (T, B, *dims), the groups' samples concatenated; zero where a sample is not labelled for the task
    saliency = on_one_scale(saliency, x, targets, names)
    dims = representation_dims(model, representations[0])
    every_task = label_mask(x, names).all(0).to(saliency.device)  # the regulariser compares the tasks' saliency on one sample
    stacked = torch.stack([losses[t] for t in names])
    if not every_task.any():
        return stacked, saliency.sum() * 0  # no sample labelled for every task: nothing to regularise, the base method alone
    saliency = saliency[:, every_task]
    _, entropy = share_entropy(saliency, dims)
    regulariser = lambda_tsr * entropy.mean() + lambda_csa * cross_task_alignment_loss(saliency, dims, temperature)
    return stacked, regulariser


class RepMTL(Method):
    """``base``'s update plus the gradient of the Rep-MTL regulariser (see the module docstring)."""

    def __init__(self, base: Method, lambda_tsr: float = 1.0, lambda_csa: float = 1.0, temperature: float = 0.1, name: str = "rep_mtl") -> None:
        if lambda_tsr < 0 or lambda_csa < 0 or temperature <= 0:
            raise ValueError(f"rep_mtl: the weights must be non-negative and the temperature positive, got {lambda_tsr}, {lambda_csa}, {temperature}")
        super().__init__(name, {"base": base.name, "lambda_tsr": lambda_tsr, "lambda_csa": lambda_csa, "temperature": temperature})
        self.base = base
        self.weights = (lambda_tsr, lambda_csa, temperature)

    def backward(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> StepOutcome:
        if isinstance(self.base, Scalarized):
            stacked, regulariser = saliency_regulariser(model, x, targets, *self.weights)
            stacked.retain_grad()
            (self.base.scalarizer(stacked) + regulariser).backward()
            return StepOutcome(stacked.detach(), stacked.grad)
        outcome = self.base.backward(model, x, targets)
        saliency_regulariser(model, x, targets, *self.weights)[1].backward()
        return outcome

    def parameters(self) -> list[nn.Parameter]:
        return self.base.parameters()

    def after_step(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> None:
        self.base.after_step(model, x, targets)

    def end_epoch(self) -> None:
        self.base.end_epoch()

    def to(self, device: torch.device | str) -> RepMTL:
        self.base.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.base.load_state_dict(state)
