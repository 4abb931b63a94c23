"""Gradient methods: a torchjd aggregator combines the rows of the per-task Jacobian into one update.

The gradient engine computes the Jacobian of the shared parameters once per step (and the heads'
gradients in the same passes). A weighting that needs only the Gramian gets the engine's Gramian,
summed block by block, and the update ``wᵀJ`` is formed block by block without concatenating the
Jacobian; a weighting of the matrix (Nash-MTL, ExcessMTL) or an aggregator without weights
(ConFIG, GradDrop) gets the concatenated Jacobian. Each task-specific parameter gets the gradient of
its own task's loss, as with torchjd's ``mtl_backward``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from workbench.gradients import Strategy, TaskJacobian, model_task_jacobian
from workbench.tasks import Inputs
from workbench.train.method import Method, StepOutcome, apply_jacobian_update
from workbench.train.state import load_module_state, module_state

__all__ = ["Aggregated", "aggregate"]


def aggregate(aggregator: nn.Module, jacobian: TaskJacobian) -> tuple[Tensor, bool]:
    """``(update, is_vector)``: the task weights ``(T,)`` of a weighted aggregator, or its flat update ``(P,)``.

    A model that shares no parameter (one adapter per task) has no Jacobian to aggregate: the weights are ones,
    and each task's own parameters get its own gradient, as under every method.
    """
    if not jacobian.blocks:
        return torch.ones(len(jacobian.tasks)), False
    from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator

    with warnings.catch_warnings():
        # cvxpy warns on every Nash-MTL step that its problem is not parametrised for speed-ups
        warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")
        if isinstance(aggregator, GramianWeightedAggregator):
            return aggregator.gramian_weighting(jacobian.gramian()), False
        if isinstance(aggregator, WeightedAggregator):
            return aggregator.weighting(jacobian.matrix()), False
        return aggregator(jacobian.matrix()), True


class Aggregated(Method):
    """Jacobian descent with a torchjd ``aggregator``; ``strategy`` goes to the gradient engine.

    Training fixes the engine's strategy (``"batched"`` by default) instead of learning it from
    timings: the two agree only to float rounding, and a run must give the same numbers every time.
    """

    def __init__(self, name: str, aggregator: nn.Module, options: Mapping[str, Any] | None = None, strategy: Strategy = "batched") -> None:
        super().__init__(name, options)
        self.aggregator = aggregator
        self.strategy = strategy

    def backward(self, model, x: Inputs, targets: Mapping[str, Tensor]) -> StepOutcome:
        jacobian = model_task_jacobian(model, x, targets, task_grads=True, strategy=self.strategy)
        update, is_vector = aggregate(self.aggregator, jacobian)
        apply_jacobian_update(model, jacobian, update, vector=is_vector)
        return StepOutcome(jacobian.losses, None if is_vector else update.detach(), jacobian)

    def to(self, device: torch.device | str) -> Aggregated:
        self.aggregator.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return module_state(self.aggregator)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_module_state(self.aggregator, state)
