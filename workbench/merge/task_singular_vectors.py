"""TSV-M, task singular vectors merging (Gargiulo et al. 2025, Task singular vectors: reducing task interference in
model merging; as FusionBench 0.2.33's ``compute_and_sum_svd_mem_reduction`` merges it).

Per matrix ``(n, p)`` with task vectors τ_m = θ_m − θ_0 = U_m S_m V_mᵀ (thin SVD, rank ``r = min(n, p)``) and
``k = ⌊r / T⌋``: each task's top ``k`` singular triplets fill block ``m`` of ``U`` ``(n, r)``, ``S`` ``(r,)`` and
``Vᵀ`` ``(r, p)`` (the last ``r − kT`` places stay 0); the blocks of different tasks are decorrelated by replacing ``U``
and ``Vᵀ`` with their nearest orthogonal matrices (the polar factor: ``A = P Σ Qᵀ`` gives ``P Qᵀ``), and

    τ = U⊥ diag(S) V⊥ᵀ,    θ = θ_0 + λ τ.

A tensor that is not a matrix takes the mean of the task vectors. λ = 1 is FusionBench's default.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["tsv_merge", "task_singular_vectors_merge", "nearest_orthogonal"]


def nearest_orthogonal(matrix: Tensor) -> Tensor:
    """The polar factor ``P Qᵀ`` of ``matrix = P Σ Qᵀ`` (its nearest matrix with orthonormal columns, or rows); its shape."""
    p, _, qt = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qt


def tsv_merge(base: Tensor, tensors: Tensor, lam: float = 1.0) -> Tensor:
    """TSV-M of the base ``(*shape)`` and the models ``tensors`` ``(T, *shape)`` (see the module docstring)."""
    tau = tensors.sub_(base)  # the stacked inputs are the rule's to change
    if base.dim() != 2:
        return base + lam * tau.mean(0)
    count, rank = tau.shape[0], min(base.shape)
    k = rank // count
    u, s, vt = torch.linalg.svd(tau, full_matrices=False)  # (T, n, r), (T, r), (T, r, p)
    blocks = slice(0, count * k)
    u_all, s_all, vt_all = torch.zeros_like(u[0]), torch.zeros_like(s[0]), torch.zeros_like(vt[0])
    u_all[:, blocks] = u[:, :, :k].permute(1, 0, 2).reshape(base.shape[0], count * k)
    s_all[blocks] = s[:, :k].reshape(-1)
    vt_all[blocks] = vt[:, :k].reshape(count * k, base.shape[1])
    return base + lam * (nearest_orthogonal(u_all) * s_all) @ nearest_orthogonal(vt_all)


task_singular_vectors_merge = as_tensor_merge(tsv_merge)
