"""GradNorm (Chen et al. 2018): learned task weights that balance the gradient norms on the last shared layer.

With weights ``w_t`` (starting at 1), the network trains on ``Σ_t w_t L_t``. On the last shared
layer ``W``, ``G_t = w_t ‖∇_W L_t‖``; with ``L̃_t = L_t / L_t(0)`` and ``r_t = L̃_t / mean_k L̃_k``, the
target is ``G_t* = mean_k G_k · r_t^α``, held constant, and ``L_grad = Σ_t |G_t − G_t*|`` updates
only the weights (its gradient is ``sign(G_t − G_t*) ‖∇_W L_t‖``), by an Adam of their own; after
each step they are renormalised to sum to T.

Cost: one forward, the heads' backward, the T rows of the gradient engine on ``W`` alone, and one
backward of ``Σ_t w_t ∂L_t/∂Z`` through the encoder: little more than a plain step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from workbench.gradients import encoder_vjp, representation_pass
from workbench.tasks import Inputs
from workbench.train.method import Method, StepOutcome, accumulate

__all__ = ["GradNorm"]


class GradNorm(Method):
    """GradNorm with asymmetry ``alpha`` (1.5 in the paper), weight learning rate ``lr`` and the balanced ``layer``.

    ``layer`` names a shared parameter tensor (as in ``model.shared_parameters()``); by default the
    last shared weight with two or more dims.
    """

    def __init__(self, name: str = "gradnorm", alpha: float = 1.5, lr: float = 0.025, layer: str | None = None) -> None:
        if alpha < 0 or lr <= 0:
            raise ValueError(f"gradnorm: alpha must be non-negative and lr positive, got alpha={alpha}, lr={lr}")
        super().__init__(name, {"alpha": alpha, "lr": lr, "layer": layer})
        self.alpha, self.lr, self.layer = alpha, lr, layer
        self.weights: Tensor | None = None
        self.initial_losses: Tensor | None = None
        self.optimizer: torch.optim.Adam | None = None

    def _layer(self, model) -> tuple[str, Tensor]:
        shared = model.shared_parameters()
        if self.layer is not None:
            found = [(n, p) for n, p in shared if n == self.layer]
            if not found:
                raise ValueError(f"gradnorm: no shared parameter {self.layer!r}; shared: {[n for n, _ in shared]}")
            return found[0]
        matrices = [(n, p) for n, p in shared if p.dim() >= 2]
        if not matrices:
            raise ValueError("gradnorm: the encoder has no shared weight with two or more dims; name one with layer=")
        return matrices[-1]

    def _ensure_weights(self, n_tasks: int, device: torch.device) -> Tensor:
        if self.weights is None:
            self.weights = torch.ones(n_tasks, device=device, requires_grad=True)
            self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)
        return self.weights

    def backward(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> StepOutcome:
        first = representation_pass(model, x, targets)
        weights = self._ensure_weights(len(model.task_names), first.losses.device)
        applied = weights.detach().clone()
        if self.initial_losses is None:
            self.initial_losses = first.losses.clone()
        name, layer = self._layer(model)
        blocks, _ = encoder_vjp(first, [(name, layer)], "batched")  # a fixed strategy: the same numbers every run
        norms = blocks[name].flatten(1).norm(dim=1)
        # the network's update: Σ_t w_t ∇L_t, through the encoder in one backward, heads scaled per task
        first.backward(applied)
        for index, params in enumerate(model.task_parameters().values()):
            for param_name, parameter in params:
                if param_name in first.head_grads:
                    accumulate(parameter, applied[index] * first.head_grads[param_name])
        # the weights' update
        balanced = applied * norms
        ratios = first.losses / self.initial_losses
        target = balanced.mean() * (ratios / ratios.mean()) ** self.alpha
        self.optimizer.zero_grad()
        weights.grad = torch.sign(balanced - target) * norms
        self.optimizer.step()
        with torch.no_grad():
            weights.clamp_(min=1e-6)
            weights.mul_(len(weights) / weights.sum())
        return StepOutcome(first.losses, applied)

    def state_dict(self) -> dict[str, Any]:
        if self.weights is None:
            return {}
        return {"weights": self.weights.detach(), "initial_losses": self.initial_losses, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.weights = None
        weights = self._ensure_weights(len(state["weights"]), state["weights"].device)
        with torch.no_grad():
            weights.copy_(state["weights"])
        self.initial_losses = state["initial_losses"]
        self.optimizer.load_state_dict(state["optimizer"])

    def to(self, device: torch.device | str) -> GradNorm:
        if self.weights is not None:
            state = self.state_dict()
            self.weights = None
            self.load_state_dict({k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()})
        return self
