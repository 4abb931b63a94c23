"""Model Stock (Jang et al. 2024, as mergekit merges it): the models' mean pulled towards the base by their offsets' angle.

With the base θ_0, ``N ≥ 2`` models and offsets ``δ_m = θ_m − θ_0``, per tensor (flattened; with ``filter_wise``, per
row of its last dim)::

    cos θ = mean over pairs m < k of ⟨δ_m, δ_k⟩ / max(|δ_m| |δ_k|, 1e-6)   (each clamped to [−1, 1])
    t = N cos θ / (1 + (N − 1) cos θ)   (0 where the denominator is below 1e-6 in magnitude)
    θ = t · mean_m θ_m + (1 − t) θ_0

Averaging the pairwise angles for ``N > 2`` is mergekit's choice; the paper derives ``t`` for two models.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["model_stock", "model_stock_merge"]


def model_stock(base: Tensor, tensors: Tensor, filter_wise: bool = False) -> Tensor:
    """Model Stock of the base ``(*shape)`` and the models ``tensors`` ``(N, *shape)`` (see the module docstring)."""
    shape, count = base.shape, tensors.shape[0]
    if filter_wise:
        theta0, thetas = (base.unsqueeze(0), tensors.unsqueeze(1)) if base.dim() == 1 else (base, tensors)
    else:
        theta0, thetas = base.reshape(-1), tensors.reshape(count, -1)
    offsets = thetas - theta0
    norms = torch.linalg.vector_norm(offsets, dim=-1)
    # every pair's dot products along the last dimension at once: (N, N), or (*rows, N, N) filter-wise
    gram = offsets @ offsets.T if offsets.dim() == 2 else torch.einsum("m...c,k...c->...mk", offsets, offsets)
    cosines = [(gram[..., m, k] / (norms[m] * norms[k]).clamp(min=1e-6)).clamp(-1, 1) for m, k in itertools.combinations(range(count), 2)]
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), count * cos / torch.where(singular, torch.ones_like(denominator), denominator))
    return (t * thetas.mean(0) + (1 - t) * theta0).reshape(shape)


model_stock.models = (2, None)
model_stock_merge = as_tensor_merge(model_stock)
