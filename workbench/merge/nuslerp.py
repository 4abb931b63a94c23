"""NuSLERP (mergekit's): two models interpolated along the great circle at ``t = w_2 / (w_1 + w_2)``, of their task vectors.

With weights ``w_1, w_2`` (``t = 0.5`` where they sum to less than 1e-6 in magnitude) and the base θ_0, the task
vectors ``τ_m = θ_m − θ_0`` are interpolated and the base added back: ``θ = θ_0 + slerp_t(τ_1, τ_2)``, where::

    slerp_t(a, b) = [sin((1 − t) Ω) a + sin(t Ω) b] / sin Ω,   cos Ω = ⟨a / |a|, b / |b|⟩ (norms clamped at 1e-7)

over the whole flattened tensor (``flatten``, the default), or over each row of a tensor's last dim, or with
``row_wise`` over its first; linear interpolation where ``1 − cos² Ω ≤ 1e-16`` (parallel or antiparallel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["nuslerp", "nuslerp_merge"]


def _slerp_rows(t: float, a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``slerp_t`` of each row (last dim) of ``a`` and ``b``."""
    unit = lambda x: x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-7)  # noqa: E731
    cos = (unit(a) * unit(b)).sum(-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos.square()) <= eps**2
    omega = torch.acos(torch.where(parallel, 0, cos))
    curved = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return torch.where(parallel, (1 - t) * a + t * b, curved)


def nuslerp(base: Tensor | None, tensors: Tensor, weights: Sequence[float] = (1.0, 1.0), row_wise: bool = False, flatten: bool = True) -> Tensor:
    """θ_0 + slerp_t(τ_1, τ_2) of the base ``(*shape)`` and two models ``tensors`` ``(2, *shape)`` (see the module docstring);
    without a base (``None``), slerp_t(θ_1, θ_2) of the models themselves, as mergekit merges them."""
    weights = [float(w) for w in weights]
    if len(weights) != 2:
        raise ValueError(f"nuslerp weighs its two models: give two weights, got {weights}")
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    origin = base if base is not None else torch.zeros_like(tensors[0])
    a, b = tensors[0] - origin, tensors[1] - origin
    if flatten:
        return origin + _slerp_rows(t, a.reshape(-1), b.reshape(-1)).reshape(a.shape)
    if row_wise and a.dim() > 1:
        return origin + _slerp_rows(t, a.transpose(0, -1), b.transpose(0, -1)).transpose(0, -1)
    return origin + _slerp_rows(t, a, b)


nuslerp.models = (2, 2)
nuslerp_merge = as_tensor_merge(nuslerp)
