"""Probes of task interaction: each is ``probe(model, batch, ...) -> xarray.Dataset``."""

from workbench.probes.conflict import (
    conflict_frequency,
    gradient_conflict,
    gramian_statistics,
    mean_cosine,
    s_conflict_score,
    upper_pairs,
)
from workbench.probes.recorder import ProbeRecorder

__all__ = [
    "ProbeRecorder",
    "conflict_frequency",
    "gradient_conflict",
    "gramian_statistics",
    "mean_cosine",
    "s_conflict_score",
    "upper_pairs",
]
