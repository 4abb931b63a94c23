"""Task-vector probes: how fine-tuned checkpoints of one base relate, and how their TALL masks overlap.

:func:`task_vector_similarity` reads the checkpoints one tensor at a time (``layer`` = tensor name) and
returns norms, pairwise cosines and sign-conflict rates after trimming. :func:`mask_overlap` counts,
per coordinate, how many TALL masks are on (0: catastrophic, 1: selfish, ≥ 2: kept by consensus) and
the pairwise Jaccard index of the masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from workbench.weights.state_dicts import Source, open_weights, open_task_weights, plan
from workbench.weights.task_vectors import TaskMasks, task_vectors, trim
from workbench.progress import progress as progress_bar

__all__ = ["task_vector_similarity", "mask_overlap"]


def _cosine(gram: np.ndarray) -> np.ndarray:
    """Cosines from Gramians of shape (..., T, T); a zero vector's cosines are NaN."""
    norms = np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = gram / (norms[..., :, None] * norms[..., None, :])
    return np.where((norms[..., :, None] > 0) & (norms[..., None, :] > 0), cos, np.nan)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def task_vector_similarity(
    models: Sequence[Source] | Mapping[str, Source],
    base: Source,
    density: float = 0.2,
    strict: bool = True,
    progress: bool = True,
) -> xr.Dataset:
    """Norms, cosines and sign conflicts of the task vectors τ_t = θ_t − θ_0, whole model and per tensor.

    Variables: ``norm`` (task), ``layer_norm`` (layer, task), ``cosine`` (task, other_task),
    ``layer_cosine`` (layer, task, other_task), ``sign_conflict`` and ``layer_sign_conflict``: after
    trimming each τ_t per tensor to its top ``density`` fraction by magnitude (as TIES), the fraction of
    the coordinates where both tasks' entries are non-zero that have opposite signs (NaN where there
    are none). A zero task vector's cosines are NaN.
    """
    names, tasks = open_task_weights(models)
    base_checkpoint = open_weights(base, "base")
    layers = [p.name for p in plan(tasks, base_checkpoint, strict) if p.action == "merge"]
    T = len(tasks)
    grams = np.zeros((len(layers), T, T))
    conflicts = np.zeros((len(layers), T, T))
    both = np.zeros((len(layers), T, T))
    for i, name in enumerate(progress_bar(layers, "task vectors", enabled=progress, leave=False)):
        tau = task_vectors(base_checkpoint[name], [c[name] for c in tasks]).reshape(T, -1).double()
        grams[i] = (tau @ tau.T).numpy()
        trimmed = trim(tau, density) if density < 1 else tau
        positive, negative = (trimmed > 0).double(), (trimmed < 0).double()
        opposite = positive @ negative.T
        conflicts[i] = (opposite + opposite.T).numpy()
        both[i] = ((positive + negative) @ (positive + negative).T).numpy()
    gram = grams.sum(0)
    ds = xr.Dataset(
        {
            "norm": ("task", np.sqrt(np.diagonal(gram))),
            "layer_norm": (("layer", "task"), np.sqrt(np.diagonal(grams, axis1=1, axis2=2))),
            "cosine": (("task", "other_task"), _cosine(gram)),
            "layer_cosine": (("layer", "task", "other_task"), _cosine(grams)),
            "sign_conflict": (("task", "other_task"), _ratio(conflicts.sum(0), both.sum(0))),
            "layer_sign_conflict": (("layer", "task", "other_task"), _ratio(conflicts, both)),
        },
        coords={"task": names, "other_task": names, "layer": layers},
    )
    ds.attrs.update(probe="task_vector_similarity", density=density)
    return ds


def mask_overlap(masks: TaskMasks) -> xr.Dataset:
    """How the TALL masks overlap, per tensor and over the whole model.

    Variables: ``layer_count`` (layer, masks_on): the number of coordinates on which exactly
    ``masks_on`` = 0..T masks are on; ``count`` (masks_on): the same over the model; ``catastrophic``,
    ``selfish`` and ``consensus``: the coordinates with 0, 1 and ≥ 2 masks on; ``selfish_by_task``
    (task): the coordinates only that task's mask keeps; ``jaccard`` (task, other_task):
    |m_i ∧ m_j| / |m_i ∨ m_j| over the model (NaN where both masks are empty).
    """
    T, layers = len(masks.tasks), list(masks.shapes)
    counts = np.zeros((len(layers), T + 1), dtype=np.int64)
    selfish = np.zeros(T, dtype=np.int64)
    intersection = np.zeros((T, T))
    for i, name in enumerate(layers):
        m = masks[name].reshape(T, -1)
        on = m.sum(0)
        counts[i] = torch.bincount(on, minlength=T + 1).numpy()
        selfish += (m & (on == 1)).sum(1).numpy()
        md = m.double()
        intersection += (md @ md.T).numpy()
    sizes = np.diagonal(intersection)
    total = counts.sum(0)
    ds = xr.Dataset(
        {
            "layer_count": (("layer", "masks_on"), counts),
            "count": ("masks_on", total),
            "catastrophic": ((), total[0]),
            "selfish": ((), total[1] if T >= 1 else 0),
            "consensus": ((), total[2:].sum()),
            "selfish_by_task": ("task", selfish),
            "jaccard": (("task", "other_task"), _ratio(intersection, sizes[:, None] + sizes[None, :] - intersection)),
        },
        coords={"layer": layers, "masks_on": np.arange(T + 1), "task": masks.tasks, "other_task": masks.tasks},
    )
    ds.attrs.update(probe="mask_overlap")
    return ds
