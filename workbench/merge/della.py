"""DELLA (Deep, Bhatt & Bhardwaj 2024, as mergekit 0.1.5 merges it): each task vector is dropped at random with a
probability that falls with the entry's magnitude rank, rescaled to its L1 norm, then merged as TIES (``della``) or
summed (``della_linear``).

Per tensor and task vector τ_m = θ_m − θ_0, in rows along the second dimension (a 1-D tensor is one row; a matrix's
rows are its output units; a tensor of more dimensions, as mergekit ranks it, has a row for every index of the other
dimensions): the entries of a row of ``n`` are ranked by magnitude, ascending, ``r = 1 … n``, and entry ``i`` is kept
with probability

    p_i = (d − ε) + 2ε (r_i − 1) / (n − 1)        (p_i = d for a row of one entry, where mergekit divides by 0)

so that a row keeps ``d`` of its entries on average, its largest most often. With ``rescale``, the kept entries are
multiplied so that the tensor keeps the L1 norm of τ_m (not by 1/p_i; left as they are where either norm is below
1e-7). Then mergekit's generalised step (:func:`~workbench.merge.arithmetic.combine_task_vectors`) with weights
``w_m``: ``della`` elects the sign of Σ_m w_m τ̂_m and keeps the agreeing entries, ``della_linear`` keeps all; with
``normalize`` the sum is divided by the sum of the contributing weights (``della``'s default, not ``della_linear``'s);
θ = θ_0 + λ · merged. ``0 < d − ε`` and ``d + ε < 1`` are required; ``d = 1`` keeps every entry.

The draws: task ``m``'s uniforms on tensor ``name`` come from NumPy's PCG64 seeded with
``SeedSequence([seed, crc32(name), m])`` (as the core's DARE masks), one float32 per entry in the flattened order,
the entry kept where its uniform is below ``p_i``. mergekit draws from torch's global generator, unseeded; the tests
give both the same draws. The masks depend on the tasks' order.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from workbench.merge.arithmetic import MergeOptions, apply_combined
from workbench.merge.tensor_wise import as_tensor_merge
from workbench.weights.task_vectors import magnitude_bits, sorts_by_bits

__all__ = ["della", "della_linear", "della_merge", "della_linear_merge", "keep_probabilities", "della_uniforms"]


def keep_probabilities(tau: Tensor, density: float, epsilon: float) -> Tensor:
    """``p_i`` of every entry of ``tau`` ``(*shape)`` by its magnitude rank along its row (see the module docstring);
    ``tau``'s shape, a 1-D ``tau`` as ``(1, n)``."""
    return _probabilities(tau.abs(), density, epsilon)


# Entries ranked at once: the sort's index array (8 bytes an entry) stays small enough for the allocator to reuse it,
# where a whole embedding's would be mapped and faulted in anew for every task.
RANKED_AT_ONCE = 1 << 20


def _probabilities(magnitudes: Tensor, density: float, epsilon: float, out: Tensor | None = None) -> Tensor:
    """``p_i`` of ``magnitudes`` (see :func:`keep_probabilities`), in ``out`` (of as many entries) when given."""
    rows = magnitudes.unsqueeze(0) if magnitudes.dim() < 2 else magnitudes
    out = torch.empty_like(rows) if out is None else out.view(rows.shape)
    n = rows.shape[1]
    if n == 1:
        return out.fill_(density)
    # p of the entry of rank r: made once per rank, then scattered (expanded, not copied) to where each rank lies
    by_rank = torch.arange(n, dtype=rows.dtype).mul_(2 * epsilon / (n - 1)).add_(density - epsilon)
    by_rank = by_rank.reshape(1, n, *([1] * (rows.dim() - 2)))
    step = max(1, RANKED_AT_ONCE // rows[0].numel())
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        out[start : start + step].scatter_(1, _order(block), by_rank.expand_as(block))
    return out


def _order(rows: Tensor) -> Tensor:
    """The argsort of ``rows`` (finite, not negative) along dimension 1: on CPU, NumPy's argsort of their bits
    (:func:`~workbench.weights.task_vectors.magnitude_bits`; about 2.7 times torch's argsort)."""
    if not sorts_by_bits(rows):
        return rows.argsort(dim=1)
    return torch.from_numpy(np.argsort(magnitude_bits(rows), axis=1))


def della_uniforms(seed: int, name: str, task: int, count: int, out: Tensor | None = None) -> Tensor:
    """The ``count`` float32 uniforms in [0, 1) that decide task ``task``'s entries of tensor ``name`` (in ``out``, a
    float32 tensor of ``count`` entries, when given)."""
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode()), task])))
    if out is None:
        return torch.from_numpy(generator.random(count, dtype=np.float32))
    generator.random(count, dtype=np.float32, out=out.numpy())
    return out


def _check(density: float, epsilon: float) -> None:
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(f"DELLA keeps entries with probabilities density ± epsilon, which must lie in (0, 1); got density {density!r}, epsilon {epsilon!r}")


def _merge(base: Tensor, tensors: Tensor, name: str, density: float, epsilon: float, lam: float, weights: Sequence[float] | None,
           normalize: bool, rescale: bool, seed: int, elect_sign: bool) -> Tensor:
    _check(density, epsilon)
    tau = tensors.sub_(base).reshape(tensors.shape[0], -1)  # the stacked inputs are the rule's to change
    if density < 1:  # buffers made once per tensor, for every task
        magnitudes, probabilities = torch.empty_like(tau[0]), torch.empty_like(tau[0])
        uniforms = torch.empty(tau.shape[1], dtype=torch.float32)
        for m, row in enumerate(tau):
            torch.abs(row, out=magnitudes)
            _probabilities(magnitudes.view(base.shape), density, epsilon, out=probabilities)
            drawn = della_uniforms(seed, name, m, row.numel(), out=uniforms)
            kept = torch.lt(drawn.to(row.dtype), probabilities, out=probabilities)  # 1 or 0
            before = float(magnitudes.sum())
            row.mul_(kept)
            if rescale:  # to τ_m's L1 norm, as mergekit rescales (not where either norm is below 1e-7)
                after = float(magnitudes.mul_(kept).sum())
                if before >= 1e-7 and after >= 1e-7:
                    row.mul_(before / after)
    return apply_combined(base, tau, weights, lam, MergeOptions(elect_sign=elect_sign, combine="mean" if normalize else "sum"))


def della(base: Tensor, tensors: Tensor, *, name: str, density: float = 0.5, epsilon: float = 0.15, lam: float = 1.0,
          weights: Sequence[float] | None = None, normalize: bool = True, rescale: bool = True, seed: int = 0) -> Tensor:
    """DELLA of the base ``(*shape)`` and the models ``tensors`` ``(T, *shape)`` on tensor ``name``, with TIES' sign election
    (see the module docstring)."""
    return _merge(base, tensors, name, density, epsilon, lam, weights, normalize, rescale, seed, elect_sign=True)


def della_linear(base: Tensor, tensors: Tensor, *, name: str, density: float = 0.5, epsilon: float = 0.15, lam: float = 1.0,
                 weights: Sequence[float] | None = None, normalize: bool = False, rescale: bool = True, seed: int = 0) -> Tensor:
    """DELLA's drops, then the weighted sum (see the module docstring)."""
    return _merge(base, tensors, name, density, epsilon, lam, weights, normalize, rescale, seed, elect_sign=False)


della_merge = as_tensor_merge(della)
della_linear_merge = as_tensor_merge(della_linear)
