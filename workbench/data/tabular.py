"""Tabular tasks with planted structure, after MultiTab-Bench's generator (Armanfard Lab's MultiTab repository).

``T`` regression tasks on ``D`` features. The tasks' weight vectors ``w_t`` (the rows of ``W``, ``(T, D)``) have
exactly the pairwise cosines asked for: with ``P`` the ``(T, T)`` correlation (1 on the diagonal, ``p``
elsewhere for one number ``p``, or a matrix), ``P = V Λ Vᵀ`` and ``U`` ``T`` orthonormal rows in ``R^D``
(Gram–Schmidt of Gaussians, here a QR), ``W = V Λ^{1/2} U``, so that ``W Wᵀ = P``. Samples ``x ~ N(0, I_D)``;
task ``t``'s target is a polynomial of degree ``d_t`` (its complexity) in its projection ``s = x · w_t``:

    y_t = s + Σ_{k=2}^{d_t} s^k + N(0, σ_t²)        (``d_t = 1``: a linear task)

MultiTab-Bench's defaults: ``d_t = 2``, ``σ_t = 0.01``; its ``synthetic_v2`` configuration is ``T = 7``,
``D = 32``, ``p = 0.4``, ``d = [1, 3, 2, 3, 4, 2, 3]``. ``P`` must be a correlation matrix (for one ``p``,
``p ≥ −1/(T − 1)``) and ``T ≤ D``.

Categorical features (the workbench's addition; MultiTab-Bench's are numerical): the last ``categorical``
of the ``D`` features are cut into ``categories`` bins of equal probability; the tasks read each bin's
mean value of the feature (so the category is all there is to know of it) and the inputs carry the
category one-hot. The inputs are then ``D − categorical`` numbers followed by ``categorical × categories``
indicators. The ground truth is ``P`` (``similarity`` and ``realised`` alike: the weight vectors' cosines
are exact). With categorical features the projections ``s_t`` read the bins' means, whose variance is
below 1, so the correlation of the tasks' projections departs from ``P`` somewhat; the weights' is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from scipy.stats import norm

from workbench.data.synthetic import SyntheticTasks
from workbench.tasks import MultiTaskData, regression_task

__all__ = ["make_tabular"]


def _correlation(correlation: float | np.ndarray, n_tasks: int) -> np.ndarray:
    if np.ndim(correlation) == 0:
        p = float(correlation)
        if n_tasks > 1 and not -1 / (n_tasks - 1) - 1e-12 <= p <= 1:
            raise ValueError(f"make_tabular: correlation {p} is no pairwise cosine of {n_tasks} unit vectors; it must lie in "
                             f"[{-1 / (n_tasks - 1):.4g}, 1]")
        matrix = np.full((n_tasks, n_tasks), p)
        np.fill_diagonal(matrix, 1.0)
        return matrix
    matrix = np.asarray(correlation, dtype=float)
    if matrix.shape != (n_tasks, n_tasks) or not np.allclose(matrix, matrix.T) or not np.allclose(np.diag(matrix), 1.0):
        raise ValueError(f"make_tabular: correlation must be a symmetric ({n_tasks}, {n_tasks}) matrix with 1 on its diagonal")
    if np.linalg.eigvalsh(matrix).min() < -1e-10:
        raise ValueError(f"make_tabular: correlation is no correlation matrix (its least eigenvalue is {np.linalg.eigvalsh(matrix).min():.3g})")
    return matrix


def _per_task(value, n_tasks: int, what: str) -> np.ndarray:
    values = np.broadcast_to(np.asarray(value), (n_tasks,)) if np.ndim(value) == 0 else np.asarray(value)
    if values.shape != (n_tasks,):
        raise ValueError(f"make_tabular: {what} must be one value or one per task ({n_tasks}), got {len(values)}")
    return values


def make_tabular(
    n_tasks: int = 7, n_features: int = 32, correlation: float | np.ndarray = 0.4, degrees: int | Sequence[int] = 2,
    noise: float | Sequence[float] = 0.01, n_samples: int = 10_000, categorical: int = 0, categories: int = 4, seed: int = 0,
) -> SyntheticTasks:
    """Draw the tabular tasks (see the module docstring): ``n_samples`` samples, tasks ``t0 … t{T-1}``, the same numbers for the same ``seed``."""
    if n_tasks < 1 or n_features < n_tasks or n_samples < 2:
        raise ValueError(f"make_tabular needs 1 <= n_tasks <= n_features and n_samples >= 2; got {n_tasks} tasks, {n_features} features, "
                         f"{n_samples} samples")
    if not 0 <= categorical <= n_features or (categorical and categories < 2):
        raise ValueError(f"make_tabular: categorical must lie in [0, {n_features}] with categories >= 2, got {categorical} and {categories}")
    matrix = _correlation(correlation, n_tasks)
    degree = _per_task(degrees, n_tasks, "degrees").astype(int)
    sigma = _per_task(noise, n_tasks, "noise").astype(float)
    if (degree < 1).any() or (sigma < 0).any():
        raise ValueError(f"make_tabular: degrees must be at least 1 and noise non-negative, got {degree.tolist()} and {sigma.tolist()}")

    rng = np.random.default_rng(seed)
    orthonormal = np.linalg.qr(rng.standard_normal((n_features, n_tasks)))[0].T  # (T, D), rows orthonormal
    eigenvalues, vectors = np.linalg.eigh(matrix)
    weights = vectors @ np.diag(np.sqrt(np.clip(eigenvalues, 0, None))) @ orthonormal  # W Wᵀ = P
    x = rng.standard_normal((n_samples, n_features))
    read, inputs = x.copy(), x[:, : n_features - categorical]
    if categorical:
        edges = norm.ppf(np.arange(1, categories) / categories)
        codes = np.stack([np.searchsorted(edges, x[:, j]) for j in range(n_features - categorical, n_features)], axis=1)  # (N, c)
        bounds = np.concatenate([[-np.inf], edges, [np.inf]])
        means = (norm.pdf(bounds[:-1]) - norm.pdf(bounds[1:])) * categories  # E[x | bin], each bin of mass 1/K
        read[:, n_features - categorical:] = means[codes]
        inputs = np.concatenate([inputs, np.eye(categories)[codes].reshape(n_samples, -1)], axis=1)
    s = read @ weights.T  # (N, T)
    targets = np.stack([sum(s[:, t] ** k for k in range(1, degree[t] + 1)) for t in range(n_tasks)], axis=1)
    targets = targets + sigma * rng.standard_normal((n_samples, n_tasks))

    names = [f"t{i}" for i in range(n_tasks)]
    coords = {"task": names, "other_task": names}
    attrs = {"generator": "tabular", "seed": seed, "n_features": n_features, "categorical": categorical, "categories": categories,
             "degrees": degree.tolist(), "noise": sigma.tolist()}
    data = MultiTaskData(torch.as_tensor(inputs, dtype=torch.float32),
                         {n: torch.as_tensor(targets[:, i], dtype=torch.float32) for i, n in enumerate(names)},
                         [regression_task(n) for n in names], attrs)
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    return SyntheticTasks(
        data=data,
        weights=xr.DataArray(weights, dims=("task", "feature"), coords={"task": names}),
        similarity=xr.DataArray(matrix, dims=("task", "other_task"), coords=coords, name="planted similarity",
                                attrs={"description": "the asked pairwise cosine of the tasks' weight vectors"}),
        realised=xr.DataArray(unit @ unit.T, dims=("task", "other_task"), coords=coords, name="realised similarity",
                              attrs={"description": "the cosine of the tasks' weight vectors (equal to the planted one)"}),
    )
