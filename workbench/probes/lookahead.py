"""One step of a torch optimizer, reproduced without changing it, for T gradients at once.

TAG's lookahead (Fifty et al. 2021) moves the shared parameters by one update of the training
optimizer computed from one task's gradient alone. :func:`lookahead_parameters` gives the parameters
after that update for every task's gradient, ``(T, *shape)`` per tensor, reading the optimizer's
state (momentum buffers, Adam's moments and step count) and changing nothing. It follows torch's
own update rules for SGD (momentum, dampening, Nesterov, weight decay, maximize), Adam and AdamW
(bias correction, AMSGrad, coupled or decoupled weight decay); any other optimizer is refused,
never replaced by plain SGD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SUPPORTED_OPTIMIZERS", "lookahead_parameters", "learning_rate"]

SUPPORTED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def _group_of(optimizer: torch.optim.Optimizer, parameter: Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is parameter for p in group["params"]):
            return group
    raise ValueError("a shared parameter is not in the optimizer's parameter groups; the lookahead needs the optimizer that trains it")


def _check(optimizer: torch.optim.Optimizer) -> None:
    if type(optimizer) not in SUPPORTED_OPTIMIZERS:
        names = ", ".join(cls.__name__ for cls in SUPPORTED_OPTIMIZERS)
        raise ValueError(
            f"the batched lookahead cannot reproduce {type(optimizer).__name__}'s update; supported: {names}. "
            "tag_affinity_loop steps any optimizer itself (slower)"
        )


def learning_rate(optimizer: torch.optim.Optimizer, parameter: Tensor) -> float:
    """The learning rate the optimizer applies to ``parameter`` now."""
    return float(_group_of(optimizer, parameter)["lr"])


def lookahead_parameters(optimizer: torch.optim.Optimizer, parameters: Sequence[Tensor], gradients: Sequence[Tensor]) -> list[Tensor]:
    """``[(T, *p.shape)]``: each parameter after one step of ``optimizer`` with each of the T gradients.

    ``gradients[k]`` holds the T gradients of ``parameters[k]``, shape ``(T, *p.shape)``.
    """
    _check(optimizer)
    updated = []
    for parameter, grads in zip(parameters, gradients):
        group = _group_of(optimizer, parameter)
        state = optimizer.state.get(parameter, {})
        theta = parameter.detach()
        if isinstance(optimizer, torch.optim.SGD):
            updated.append(_sgd(theta, grads, group, state))
        else:
            updated.append(_adam(theta, grads, group, state, decoupled=isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)))
    return updated


def _sgd(theta: Tensor, grads: Tensor, group: dict, state: dict) -> Tensor:
    d_p = -grads if group["maximize"] else grads
    if group["weight_decay"]:
        d_p = d_p + group["weight_decay"] * theta
    momentum = group["momentum"]
    if momentum:
        buffer = state.get("momentum_buffer")
        buffer = d_p if buffer is None else momentum * buffer + (1 - group["dampening"]) * d_p
        d_p = d_p + momentum * buffer if group["nesterov"] else buffer
    return theta - group["lr"] * d_p


def _adam(theta: Tensor, grads: Tensor, group: dict, state: dict, decoupled: bool) -> Tensor:
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    grad = -grads if group["maximize"] else grads
    base = theta
    if weight_decay:
        if decoupled:
            base = theta * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * theta
    step = float(state["step"]) + 1 if "step" in state else 1.0
    exp_avg = state.get("exp_avg", torch.zeros_like(theta))
    exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(theta))
    exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)  # lerp, as torch does
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    if group["amsgrad"]:
        exp_avg_sq = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(theta)), exp_avg_sq)
    denominator = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step) + eps
    return base - (lr / (1 - beta1**step)) * exp_avg / denominator
