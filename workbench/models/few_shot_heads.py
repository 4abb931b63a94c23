"""Linear heads fitted in closed form on a few labelled examples, and scored by their leave-one-out error.

For a task's ``n`` examples with representation ``Z`` (``n × d``) and targets ``Y`` (``n × k``), the head
``[W; b] = (Z₁ᵀ Z₁ + P)⁻¹ Z₁ᵀ Y`` with ``Z₁ = [Z, 1]`` and ``P = ridge · diag(1, …, 1, 0)`` (ridge regression, the
intercept not penalised: scikit-learn's ``Ridge(alpha=ridge)``). Its leave-one-out predictions come without
refitting: with ``h_i`` the diagonal of the hat matrix ``Z₁ (Z₁ᵀ Z₁ + P)⁻¹ Z₁ᵀ`` and ``e_i`` the fitted residual,
the prediction for example ``i`` of the head fitted on the others is ``y_i − e_i / (1 − h_i)``, exactly. The
task's own loss of those predictions says how well the representation carries the task from ``n`` examples,
where the fitted head's own loss (``d ≥ n``: zero) says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from workbench.tasks import Inputs, MultiTaskModel

__all__ = ["fit_heads", "ridge_fit"]


def ridge_fit(z: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(weight (k, d), bias (k,), leave-one-out predictions (n, k))`` of the ridge head on ``z`` ``(n, d)`` and
    ``y`` ``(n, k)`` (see the module docstring), computed in float64 and returned in ``z``'s dtype."""
    n, d = z.shape
    z1 = torch.cat([z.double(), z.new_ones(n, 1, dtype=torch.float64)], dim=1)
    penalty = torch.full((d + 1,), float(ridge), dtype=torch.float64, device=z.device)
    penalty[-1] = 0.0
    gram = z1.T @ z1 + torch.diag(penalty)
    coefficients = torch.linalg.solve(gram, z1.T @ y.double())  # (d + 1, k)
    hat = (z1 * torch.linalg.solve(gram, z1.T).T).sum(1, keepdim=True)  # (n, 1): the hat matrix's diagonal
    loo = y.double() - (y.double() - z1 @ coefficients) / (1 - hat)
    return coefficients[:-1].T.to(z.dtype), coefficients[-1].to(z.dtype), loo.to(z.dtype)


@torch.no_grad()
def fit_heads(model: MultiTaskModel, x: Inputs, targets: Mapping[str, Tensor], ridge: float) -> dict[str, Tensor]:
    """Fit every task's linear head on the examples ``(x (n, ...), {task: (n,) or (n, k)})`` by ridge regression on
    the model's representation, in place; return ``{task: its loss of the leave-one-out predictions}``.

    Refused before any head changes: a task that is not a regression, a head that is not an ``nn.Linear`` with
    a bias, a task not labelled on every example or with targets that are not finite, fewer than two examples, a ridge that is not positive."""
    if not ridge > 0:
        raise ValueError(f"ridge must be positive (the heads are fitted on fewer examples than features), got {ridge!r}")
    z = model.represent(x)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"fitting a head and scoring it on the others needs at least two examples, got {n}")
    refused = {task: why for task in model.tasks if (why := _unfittable(model, task, targets, n))}
    if refused:
        raise ValueError(f"heads that cannot be fitted in closed form: {refused}")
    losses = {}
    for task, spec in model.tasks.items():
        head: nn.Linear = model.heads[task]
        y = targets[task].to(z).reshape(n, head.out_features)
        weight, bias, loo = ridge_fit(z, y, ridge)
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        losses[task] = spec.loss(loo, targets[task].to(z))
    return losses


def _unfittable(model: MultiTaskModel, task: str, targets: Mapping[str, Tensor], n: int) -> str:
    """Why ``task``'s head cannot be fitted on the examples, or ``""``."""
    head = model.heads[task]
    if model.tasks[task].kind != "regression":
        return f"a {model.tasks[task].kind} task (only regressions are fitted)"
    if not isinstance(head, nn.Linear) or head.bias is None:
        return f"its head is a {type(head).__name__}, not a linear layer with a bias"
    if task not in targets or targets[task].shape[0] != n:
        return f"labelled on {0 if task not in targets else targets[task].shape[0]} of the {n} examples, not all"
    if targets[task].numel() != n * head.out_features:
        return f"targets of shape {tuple(targets[task].shape)} for a head of {head.out_features} outputs"
    if not torch.isfinite(targets[task]).all():
        return "its targets hold NaN or infinite values"
    return ""
