"""The examples a data-dependent merge reads: a seeded draw of at most ``n`` of a task's inputs."""

from __future__ import annotations

import torch

from workbench.tasks import Inputs, num_samples, take_rows

__all__ = ["draw_examples"]


def draw_examples(x: Inputs, n_examples: int, seed: int) -> Inputs:
    """``min(n_examples, N)`` rows of ``x`` in a random order drawn from ``seed``."""
    if n_examples < 1:
        raise ValueError(f"n_examples must be positive, got {n_examples}")
    count = min(n_examples, num_samples(x))
    rows = torch.randperm(num_samples(x), generator=torch.Generator().manual_seed(seed))[:count]
    return take_rows(x, rows)
