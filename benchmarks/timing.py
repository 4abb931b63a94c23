"""Timing shared by the benchmarks: median seconds of calls that take turns, and a plain training step to time (peak memory:
``workbench.studies.peak_memory_mib``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def median_seconds(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: Mapping[str, int] | int = 2) -> dict[str, float]:
    """Median seconds per call; the calls take turns in every round so that drifts in machine speed hit all alike,
    and the round's first call moves on by one each round, so that no call always follows the same one (the call
    after an optimizer step finds colder caches: a fixed order made the first call measure up to 20% slower).

    ``warmup`` calls of each (a number for all, or per name) run first and are not timed.
    """
    for name, call in calls.items():
        for _ in range(warmup if isinstance(warmup, int) else warmup.get(name, 2)):
            call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def plain_step(model, x, targets):
    """A plain training step of ``model`` on the batch, as a call: :func:`~workbench.train.loop.summed_step` (the summed
    loss's backward, the model's auxiliary losses', Adam's step over the trainable parameters, the after-step hooks), with a
    learning rate too small to change what the next call times."""
    import functools

    import torch

    from workbench.train.loop import summed_step

    return functools.partial(summed_step, model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-9), x, targets)
