"""Gradient conflict between tasks (Yu et al. 2020; Recon, Guangyuan et al. 2023).

All quantities follow from the Gramian ``G = J Jᵀ`` of the per-task gradients over the shared
parameters: ``cos_ij = G_ij / √(G_ii G_jj)``, the gradient magnitude similarity
``Φ_ij = 2‖g_i‖‖g_j‖ / (‖g_i‖² + ‖g_j‖²)`` and the conflict indicator ``cos_ij < threshold``. A task with
a zero gradient has no direction: its cosines, similarities and indicators are NaN, never numbers
that look measured; a task labelled on no sample of the batch (its loss NaN) has NaN everywhere,
its gradient norm included.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from workbench.gradients import Grouping, Strategy, TaskJacobian, model_task_jacobian
from workbench.probes.isolation import leaves_model_untouched

__all__ = [
    "gramian_statistics",
    "gradient_conflict",
    "conflict_frequency",
    "s_conflict_score",
    "mean_cosine",
    "upper_pairs",
]


def gramian_statistics(gramian: Tensor, threshold: float = 0.0) -> dict[str, np.ndarray]:
    """Cosine, magnitude similarity and conflict indicator ``(T, T)`` and gradient norms ``(T,)`` from a Gramian.

    Entries that involve a task with a zero gradient are NaN; the indicator is 1.0 / 0.0 / NaN.
    """
    g = gramian.detach().double().cpu()
    g = (g + g.T) / 2  # exact symmetry; float32 products differ in the last bits
    squared = torch.diagonal(g).clamp_min(0)
    norm = squared.sqrt()
    undefined = (squared == 0)[:, None] | (squared == 0)[None, :]
    cosine = (g / (norm[:, None] * norm[None, :])).clamp(-1, 1)
    magnitude = 2 * norm[:, None] * norm[None, :] / (squared[:, None] + squared[None, :])
    cosine[undefined] = torch.nan
    magnitude[undefined] = torch.nan
    conflict = (cosine < threshold).double()
    conflict[undefined] = torch.nan
    return {
        "cosine": cosine.numpy(),
        "magnitude_similarity": magnitude.numpy(),
        "conflict": conflict.numpy(),
        "grad_norm": norm.numpy(),
    }


def _statistics_dataset(gramians: Mapping[str, Tensor], tasks: list[str], threshold: float) -> xr.Dataset:
    """Stack per-layer statistics along a ``layer`` dim."""
    per_layer = [gramian_statistics(g, threshold) for g in gramians.values()]
    pair_dims = ("layer", "task", "other_task")
    return xr.Dataset(
        {
            f"layer_{key}": (pair_dims if key != "grad_norm" else ("layer", "task"), np.stack([s[key] for s in per_layer]))
            for key in per_layer[0]
        },
        coords={"layer": list(gramians), "task": tasks, "other_task": tasks},
    )


@leaves_model_untouched
def gradient_conflict(
    model,
    batch: tuple[Tensor, Mapping[str, Tensor]],
    threshold: float = 0.0,
    by: Grouping = "tensor",
    strategy: Strategy = "auto",
    jacobian: TaskJacobian | None = None,
) -> xr.Dataset:
    """Pairwise gradient conflict of a model's tasks on one batch, whole encoder and per layer.

    ``batch`` is ``(x, {task: targets})``. Returns a Dataset with ``cosine``, ``magnitude_similarity``,
    ``conflict`` over ``(task, other_task)``, ``grad_norm`` and ``loss`` over ``task``, and the same
    statistics per layer as ``layer_*`` over ``(layer, task, other_task)``; layers are parameter
    tensors (``by="tensor"``), modules (``"module"``) or blocks such as transformer layers
    (``"block"``, see :func:`~workbench.gradients.layer_label`). ``strategy`` goes to the gradient
    engine; the one it used is in the attrs. ``jacobian``, the engine's result for this model and
    batch when a training step already computed it, is used instead of computing it again.
    """
    if jacobian is None:
        x, targets = batch
        jacobian = model_task_jacobian(model, x, targets, strategy=strategy)
    layers = _statistics_dataset(jacobian.gramians(by), jacobian.tasks, threshold)
    whole = gramian_statistics(jacobian.gramian(), threshold)
    pair_dims = ("task", "other_task")
    ds = layers.assign(
        {key: (pair_dims if key != "grad_norm" else ("task",), value) for key, value in whole.items()}
    ).assign(loss=("task", jacobian.losses.double().cpu().numpy()))
    unlabelled = [t for t, loss in zip(jacobian.tasks, jacobian.losses.tolist()) if np.isnan(loss)]
    if unlabelled:  # labelled on no sample of the batch: a zero row that measures nothing
        ds = ds.map(lambda v: v.where(~(v.task.isin(unlabelled) | (v.other_task.isin(unlabelled) if "other_task" in v.dims else False))))
    ds.attrs.update(probe="gradient_conflict", threshold=threshold, by=by, strategy=jacobian.strategy)
    return ds


def upper_pairs(da: xr.DataArray) -> xr.DataArray:
    """The pairs ``i < j`` of a ``(task, other_task)`` array stacked into one ``pair`` dim labelled ``"a–b"``."""
    tasks = list(da.task.values)
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
    stacked = xr.concat([da.sel(task=a, other_task=b, drop=True) for a, b in pairs], dim="pair")
    return stacked.assign_coords(pair=[f"{a}–{b}" for a, b in pairs])


def conflict_frequency(history: xr.Dataset, threshold: float | None = None) -> xr.Dataset:
    """Fraction of recorded steps in which each pair conflicts, whole (``frequency``) and per layer (``layer_frequency``).

    ``history`` is a recorded conflict probe with a ``step`` dim. ``threshold`` defaults to the probe's
    own. Steps where a pair is undefined (a zero gradient) are left out of that pair's fraction.
    """
    threshold = history.attrs.get("threshold", 0.0) if threshold is None else threshold
    frequency = {}
    for name, source in (("frequency", "cosine"), ("layer_frequency", "layer_cosine")):
        cos = history[source]
        frequency[name] = (cos < threshold).where(cos.notnull()).mean("step")
    ds = xr.Dataset(frequency)
    ds.attrs.update(summary="conflict_frequency", threshold=threshold)
    return ds


def s_conflict_score(history: xr.Dataset, s: float = 0.0) -> xr.DataArray:
    """Recon's S-conflict score per layer: the count of (step, pair ``i < j``) entries with cosine below ``s``."""
    below = upper_pairs(history["layer_cosine"]) < s
    score = below.sum(dim=("step", "pair"))
    score.attrs.update(summary="s_conflict_score", s=s)
    return score.rename("s_conflict_score")


def mean_cosine(history: xr.Dataset) -> xr.DataArray:
    """The pairwise cosine averaged over the recorded steps (NaN steps skipped), ``(task, other_task)``."""
    return history["cosine"].mean("step").rename("mean_cosine")
