"""Synthetic multi-task data with a planted task relationship (in the spirit of MultiTab-Bench).

Each task ``t`` has a true weight vector ``w_t`` in feature space; the weight vectors are drawn with
a chosen correlation matrix ``C`` (``corr(w_i, w_j) = C_ij``), so related tasks look at the same
directions and anti-correlated tasks at opposite ones. A task's target is ``s + c_t·sin(2s)`` of its
projection ``s = x·w_t / √F`` (``c_t`` its "complexity"), plus noise; classification tasks threshold
it at zero. The planted similarity comes back as an ``xarray.DataArray`` with dims
``(task, other_task)`` for checking the probes against it, beside the similarity the drawn weight
vectors realised (their cosines), which is what the data actually holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from workbench.tasks import MultiTaskData, MultiTaskSplits, classification_task, regression_task

__all__ = ["block_similarity", "SyntheticTasks", "make_synthetic"]


def block_similarity(
    n_tasks: int,
    groups: Sequence[Sequence[int]] = (),
    anti_pairs: Sequence[tuple[int, int]] = (),
    within: float = 0.9,
    anti: float = -0.9,
) -> np.ndarray:
    """A planted ``(n_tasks, n_tasks)`` correlation matrix built from blocks.

    Tasks in one of ``groups`` correlate at ``within``; each pair in ``anti_pairs`` at ``anti``; all
    other pairs are unrelated (0). The result is projected to the nearest valid correlation matrix
    (positive semi-definite, unit diagonal) when the blocks alone are not one.
    """
    c = np.eye(n_tasks)
    seen: set[int] = set()
    for group in groups:
        for i in group:
            _check_index(i, n_tasks)
            if i in seen:
                raise ValueError(f"task {i} is in two groups")
            seen.add(i)
        for i in group:
            for j in group:
                if i != j:
                    c[i, j] = within
    for i, j in anti_pairs:
        _check_index(i, n_tasks)
        _check_index(j, n_tasks)
        if i == j:
            raise ValueError(f"anti-correlated pair ({i}, {j}) names one task twice")
        c[i, j] = c[j, i] = anti
    return nearest_correlation(c)


def _check_index(i: int, n: int) -> None:
    if not 0 <= i < n:
        raise ValueError(f"task index {i} out of range for {n} tasks")


def nearest_correlation(c: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """``c`` with negative eigenvalues clipped to ``floor`` and the diagonal rescaled to one."""
    c = (c + c.T) / 2
    values, vectors = np.linalg.eigh(c)
    if values.min() >= floor:
        return c
    fixed = (vectors * np.clip(values, floor, None)) @ vectors.T
    scale = np.sqrt(np.diag(fixed))
    fixed = fixed / np.outer(scale, scale)
    return (fixed + fixed.T) / 2


def _supports(n_tasks: int, n_features: int, active: int, groups: Sequence[Sequence[int]], seed: int) -> np.ndarray:
    """``(T, F)`` masks: each group's tasks share ``active`` random features, every other task has its own."""
    if not 1 <= active <= n_features:
        raise ValueError(f"active_features must be between 1 and n_features = {n_features}, got {active}")
    rng = np.random.default_rng([seed, 1])  # its own stream: the weights and inputs stay as without sparsity
    mask = np.zeros((n_tasks, n_features))
    grouped = {i for group in groups for i in group}
    for members in [list(g) for g in groups] + [[i] for i in range(n_tasks) if i not in grouped]:
        mask[members, rng.choice(n_features, active, replace=False)[:, None]] = 1.0
    return mask


@dataclass
class SyntheticTasks:
    """A generated problem: the data, the true weight vectors ``(task, feature)``, the planted (designed)
    similarity and the similarity the drawn weight vectors realised."""

    data: MultiTaskData
    weights: xr.DataArray
    similarity: xr.DataArray
    realised: xr.DataArray

    @property
    def reference(self) -> xr.DataArray:
        """The realised similarity: what the drawn tasks share, the reference every builder offers."""
        return self.realised

    def splits(self, validation_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> MultiTaskSplits:
        """A seeded train / validation / test split with the realised similarity as reference."""
        return self.data.splits(validation_fraction, test_fraction, seed, reference=self.realised)


def make_synthetic(
    n_tasks: int = 6,
    n_samples: int = 2000,
    n_features: int = 16,
    similarity: np.ndarray | None = None,
    groups: Sequence[Sequence[int]] = (),
    anti_pairs: Sequence[tuple[int, int]] = (),
    within: float = 0.9,
    anti: float = -0.9,
    complexity: float | Sequence[float] = 0.0,
    noise: float = 0.1,
    classification: Sequence[int] = (),
    outliers: Sequence[int] = (),
    active_features: int | None = None,
    seed: int = 0,
) -> SyntheticTasks:
    """Draw ``n_samples`` inputs ``x ~ N(0, I_F)`` and ``n_tasks`` targets with a planted relationship.

    The relationship is ``similarity`` (a ``(T, T)`` correlation matrix) or, when it is omitted, the
    blocks given by ``groups`` and ``anti_pairs`` (see :func:`block_similarity`). ``complexity`` (one
    value or one per task) adds the ``sin`` nonlinearity; ``noise`` is the target noise's standard
    deviation; tasks listed in ``classification`` get binary labels; tasks in ``outliers`` look at
    features of their own (a weight vector independent of every other task) with complexity 1.
    With ``active_features = k`` each task reads only ``k`` of the features (its true weights are
    zero elsewhere): the tasks of one group read the same ``k`` features, every other task ``k`` of
    its own drawn at random, so supports overlap by chance only; the weights then show which
    features each task reads. Tasks are named ``t0 … t{T-1}``. The same ``seed`` gives the same numbers.
    """
    if n_tasks < 1 or n_samples < 2 or n_features < 1:
        raise ValueError(f"need n_tasks >= 1, n_samples >= 2, n_features >= 1; got {n_tasks}, {n_samples}, {n_features}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if similarity is None:
        similarity = block_similarity(n_tasks, groups, anti_pairs, within, anti)
    similarity = np.asarray(similarity, dtype=float)
    if similarity.shape != (n_tasks, n_tasks):
        raise ValueError(f"similarity must have shape ({n_tasks}, {n_tasks}), got {similarity.shape}")
    for i in outliers:
        _check_index(i, n_tasks)
        similarity = similarity.copy()
        similarity[i, :] = similarity[:, i] = 0.0
        similarity[i, i] = 1.0
    similarity = nearest_correlation(similarity)
    complexities = np.broadcast_to(np.asarray(complexity, dtype=float), (n_tasks,)).copy()
    complexities[list(outliers)] = 1.0
    for i in classification:
        _check_index(i, n_tasks)

    rng = np.random.default_rng(seed)
    weights = np.linalg.cholesky(similarity + 1e-9 * np.eye(n_tasks)) @ rng.standard_normal((n_tasks, n_features))
    x = rng.standard_normal((n_samples, n_features))
    if active_features is not None:
        weights = weights * _supports(n_tasks, n_features, active_features, groups, seed)
    projection = x @ weights.T / np.sqrt(n_features if active_features is None else active_features)
    targets = projection + complexities * np.sin(2 * projection) + noise * rng.standard_normal((n_samples, n_tasks))

    names = [f"t{i}" for i in range(n_tasks)]
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    coords = {"task": names, "other_task": names}
    tasks = [classification_task(n) if i in classification else regression_task(n) for i, n in enumerate(names)]
    target_tensors = {
        n: torch.as_tensor((targets[:, i] > 0) if i in classification else targets[:, i], dtype=torch.float32)
        for i, n in enumerate(names)
    }
    attrs = {"generator": "synthetic", "seed": seed, "n_features": n_features, "noise": noise}
    data = MultiTaskData(torch.as_tensor(x, dtype=torch.float32), target_tensors, tasks, attrs)
    return SyntheticTasks(
        data=data,
        weights=xr.DataArray(weights, dims=("task", "feature"), coords={"task": names}),
        similarity=xr.DataArray(
            similarity, dims=("task", "other_task"), coords=coords, name="planted similarity",
            attrs={"description": "planted correlation of the tasks' true weight vectors"},
        ),
        realised=xr.DataArray(
            unit @ unit.T, dims=("task", "other_task"), coords=coords, name="realised similarity",
            attrs={"description": "cosine of the drawn weight vectors: the correlation of the tasks' linear parts"},
        ),
    )
