"""The Karcher mean (mergekit's): the models' tensors averaged on the sphere, then scaled to their mean norm.

For the ``N`` models' tensors θ_m (flattened), equal weights ``α = 1/N``, norms ``r_m`` and unit directions ``u_m``
(those of norm at most ``tol`` left out of the mean), start from the normalised mean of the ``u_m`` (the first
``u_m`` when that mean's norm is below ``tol``) and repeat, at most ``max_iter`` times::

    T = Σ_m α'_m (φ_m / sin φ_m)(u_m − cos φ_m u),   cos φ_m = ⟨u, u_m⟩   (terms with φ_m < tol left out)
    u ← cos|T| u + sin|T| T / |T|, normalised;   stop once |T| < tol

with ``α'`` the weights renormalised over the kept directions; the result is ``(Σ_m α_m r_m) u``. The base only names
the tensors: the mean is over the models alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["karcher", "karcher_merge"]


def karcher(base: Tensor | None, tensors: Tensor, max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """The Karcher mean of ``tensors`` ``(N, *shape)`` (see the module docstring); ``base`` is not read."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative number of iterations, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    count, shape = tensors.shape[0], tensors.shape[1:]
    if count == 1:
        return tensors[0]
    flat = tensors.reshape(count, -1)
    norms = torch.linalg.vector_norm(flat, dim=1)
    kept = norms > tol
    if not bool(kept.any()):
        return torch.zeros(shape, dtype=tensors.dtype)
    units = flat[kept] / norms[kept, None]
    alphas = torch.full((units.shape[0],), 1.0 / units.shape[0], dtype=tensors.dtype)
    mean = (alphas[:, None] * units).sum(0)
    mean = units[0].clone() if torch.linalg.vector_norm(mean) < tol else mean / torch.linalg.vector_norm(mean)
    for _ in range(max_iter):
        dots = (units @ mean).clamp(-1, 1)
        phis = torch.arccos(dots)
        moving = phis >= tol
        factors = torch.where(moving, phis / torch.sin(torch.where(moving, phis, torch.ones_like(phis))), torch.zeros_like(phis))
        coefficients = alphas * factors  # T = Σ_m c_m (u_m − cos φ_m u) = Σ_m c_m u_m − (Σ_m c_m cos φ_m) u, with no (N, n) temporary
        tangent = coefficients @ units - (coefficients @ dots) * mean
        length = torch.linalg.vector_norm(tangent)
        if length < tol:
            break
        mean = torch.cos(length) * mean + torch.sin(length) * tangent / length
        if torch.linalg.vector_norm(mean) > tol:
            mean = mean / torch.linalg.vector_norm(mean)
    return (norms.mean() * mean).reshape(shape)


karcher.models = (1, None)
karcher_merge = as_tensor_merge(karcher, uses_base=False)
