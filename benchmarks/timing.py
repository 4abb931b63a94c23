"""Timing shared by the benchmarks: median seconds of calls that take turns."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def median_seconds(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: Mapping[str, int] | int = 2) -> dict[str, float]:
    """Median seconds per call; the calls take turns in every round so that drifts in machine speed hit all alike.

    ``warmup`` calls of each (a number for all, or per name) run first and are not timed.
    """
    for name, call in calls.items():
        for _ in range(warmup if isinstance(warmup, int) else warmup.get(name, 2)):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
