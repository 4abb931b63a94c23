"""Isotropic merging (Marczak et al. 2025, No task left behind: isotropic model merging with common and task-specific
subspaces; as FusionBench 0.2.33's ``iso_c`` and ``iso_cts`` merge): the merged task matrix keeps its singular
directions and flattens its spectrum, so that no direction (no task) dominates.

Per matrix ``(n, p)`` with task vectors τ_m = θ_m − θ_0, ``r = min(n, p)``:

- **Iso-C** (``iso_c``): Σ_m τ_m = U S Vᵀ; τ = U (s̄ I) Vᵀ with s̄ the mean singular value.
- **Iso-CTS** (``iso_cts``): the common subspace is the top ``c`` singular triplets of Σ_m τ_m, ``c = r − T q`` with
  ``q = round((r − ⌊f r⌋) / T)`` directions per task (``f``, ``common_space_fraction``); each task's own ``q`` top
  triplets come from the SVD of its τ_m minus its projection onto the common left subspace, ``τ_m − U_c U_cᵀ τ_m``
  (``q`` at most ``⌊r / T⌋``, where FusionBench's rounding up would ask for more directions than the matrix has).
  The task blocks, then the common one, fill ``U`` ``(n, r)``, ``S`` and ``Vᵀ``; ``U`` and ``Vᵀ`` are replaced by their
  nearest orthogonal matrices, and τ = U⊥ (s̄ I) V⊥ᵀ with s̄ the mean of ``S``.

A tensor that is not a matrix takes the mean of the task vectors; θ = θ_0 + λ τ (λ = 1, FusionBench's default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.merge.task_singular_vectors import nearest_orthogonal
from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["iso_c", "iso_cts", "iso_c_merge", "iso_cts_merge"]


def iso_c(base: Tensor, tensors: Tensor, lam: float = 1.0) -> Tensor:
    """Iso-C of the base ``(*shape)`` and the models ``tensors`` ``(T, *shape)`` (see the module docstring)."""
    tau = tensors.sub_(base)  # the stacked inputs are the rule's to change
    if base.dim() != 2:
        return base + lam * tau.mean(0)
    u, s, vt = torch.linalg.svd(tau.sum(0), full_matrices=False)
    return base + lam * (u * s.mean()) @ vt


def iso_cts(base: Tensor, tensors: Tensor, lam: float = 1.0, common_space_fraction: float = 0.8) -> Tensor:
    """Iso-CTS of the base ``(*shape)`` and the models ``tensors`` ``(T, *shape)`` (see the module docstring)."""
    if not 0 <= common_space_fraction <= 1:
        raise ValueError(f"common_space_fraction must be in [0, 1], got {common_space_fraction!r}")
    tau = tensors.sub_(base)
    if base.dim() != 2:
        return base + lam * tau.mean(0)
    count, rank = tau.shape[0], min(base.shape)
    per_task = min(round((rank - int(rank * common_space_fraction)) / count), rank // count)
    common = rank - per_task * count
    u, s, vt = torch.linalg.svd(tau.sum(0), full_matrices=False)
    u_common = u[:, :common]
    own = tau - u_common @ (u_common.T @ tau)  # (T, n, p): each task without the common left subspace
    u_t, s_t, vt_t = torch.linalg.svd(own, full_matrices=False)
    n, p = base.shape
    u_all = torch.cat([u_t[:, :, :per_task].permute(1, 0, 2).reshape(n, count * per_task), u_common], dim=1)
    s_all = torch.cat([s_t[:, :per_task].reshape(-1), s[:common]])
    vt_all = torch.cat([vt_t[:, :per_task].reshape(count * per_task, p), vt[:common]], dim=0)
    return base + lam * (nearest_orthogonal(u_all) * s_all.mean()) @ nearest_orthogonal(vt_all)


iso_c_merge = as_tensor_merge(iso_c)
iso_cts_merge = as_tensor_merge(iso_cts)
