"""Loss-weighting methods: a torchjd scalarizer combines the task losses into one loss to backpropagate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from workbench.tasks import Inputs
from workbench.train.method import Method, StepOutcome
from workbench.train.state import load_module_state, module_state

__all__ = ["Scalarized"]


class Scalarized(Method):
    """Backpropagates ``scalarizer(losses)`` (losses ``(T,)``); its weights are ``∂ scalarizer / ∂ L_t``.

    Uncertainty weighting's and IMTL-L's learnable scales train with the model's optimizer; FAMO
    updates its own logits after every optimizer step from the losses recomputed on the same batch;
    DWA rolls its loss history at the end of every epoch.
    """

    def __init__(self, name: str, scalarizer: nn.Module, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.scalarizer = scalarizer

    def backward(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> StepOutcome:
        losses = model.losses(x, targets)
        stacked = torch.stack([losses[n] for n in model.task_names])
        stacked.retain_grad()  # the weights come out of the same backward
        self.scalarizer(stacked).backward()
        return StepOutcome(stacked.detach(), stacked.grad)

    def parameters(self) -> list[nn.Parameter]:
        from torchjd.scalarization import FAMO

        return [] if isinstance(self.scalarizer, FAMO) else list(self.scalarizer.parameters())  # FAMO steps its own logits

    def after_step(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> None:
        update = getattr(self.scalarizer, "update", None)
        if update is not None:
            with torch.no_grad():
                losses = model.losses(x, targets)
            update(torch.stack([losses[n] for n in model.task_names]))

    def end_epoch(self) -> None:
        step = getattr(self.scalarizer, "step", None)
        if step is not None:
            step()

    def to(self, device: torch.device | str) -> Scalarized:
        self.scalarizer.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return module_state(self.scalarizer)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_module_state(self.scalarizer, state)
