"""Probes of task interaction: each is ``probe(model, batch, ...) -> xarray.Dataset``."""

from workbench.probes.affinity import cosine_affinity, mean_affinity, tag_affinity, tag_affinity_loop
from workbench.probes.conflict import (
    conflict_frequency,
    gradient_conflict,
    gramian_statistics,
    mean_cosine,
    s_conflict_score,
    upper_pairs,
)
from workbench.probes.recorder import ProbeRecorder
from workbench.probes.task_vectors import mask_overlap, task_vector_similarity

__all__ = [
    "ProbeRecorder",
    "cosine_affinity",
    "mean_affinity",
    "tag_affinity",
    "tag_affinity_loop",
    "conflict_frequency",
    "gradient_conflict",
    "gramian_statistics",
    "mask_overlap",
    "mean_cosine",
    "s_conflict_score",
    "task_vector_similarity",
    "upper_pairs",
]
