"""Which tasks should share a network: up to ``k`` groups (overlap allowed) that serve every task best.

A candidate group ``G`` gives each member ``t`` a score ``s(t, G)``; a solution ``S`` (at most ``k``
groups covering every task) serves each task by its best group, and its value is the mean over
tasks of those scores. Two scorings:

- :func:`affinity_scores`, TAG's network selection (Fifty et al. 2021): ``s(t, G)`` is the mean of
  ``Z_{j→t}`` over the other members ``j`` of ``G`` (0 for a task alone), from any
  ``(source, target)`` affinity;
- :func:`measured_scores`, Standley et al. (2020): ``s(t, G) = −L_t(G)``, the measured loss of ``t``
  in the network trained on ``G`` (validation split, mean over seeds): the best solution minimises
  the total loss.

:func:`select_groups` finds the best solution exactly while the tasks are few (up to ``EXACT_UP_TO``
= 12, where every subset is a candidate): each task is served by one group, so a solution is a
partition of the tasks by serving group, and a dynamic programme over the partitions (``O(k · 3^T)``,
about half a million states at 12 tasks) finds the best one among any set of candidates. Beyond
that it runs a documented heuristic: the candidates are every task alone, every pair and every
cluster of an average-linkage agglomerative clustering of the symmetrised affinity; greedy
selection (within ``1 − 1/e`` of the best over those candidates, the objective being a submodular
facility-location function) is then improved by swapping groups in and out until no swap helps.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = ["EXACT_UP_TO", "Candidates", "affinity_scores", "measured_scores", "select_groups", "grouping_table"]

EXACT_UP_TO = 12


@dataclass(frozen=True)
class Candidates:
    """Candidate groups and their scores: ``groups[c]`` (task names) and ``scores`` ``(C, T)``, ``-inf`` for non-members."""

    tasks: list[str]
    groups: list[tuple[str, ...]]
    scores: np.ndarray


def _all_subsets(tasks: Sequence[str]) -> list[tuple[str, ...]]:
    return [combo for size in range(1, len(tasks) + 1) for combo in itertools.combinations(tasks, size)]


def _cluster_candidates(affinity: np.ndarray, tasks: list[str]) -> list[tuple[str, ...]]:
    """Singles, pairs and the clusters of average-linkage clustering on the symmetrised affinity (many tasks)."""
    from scipy.cluster.hierarchy import linkage, to_tree
    from scipy.spatial.distance import squareform

    similarity = (affinity + affinity.T) / 2
    distance = similarity.max() - similarity
    np.fill_diagonal(distance, 0)
    clusters: list[tuple[str, ...]] = []

    def collect(node) -> list[int]:
        members = [node.id] if node.is_leaf() else collect(node.get_left()) + collect(node.get_right())
        clusters.append(tuple(tasks[i] for i in sorted(members)))
        return members

    collect(to_tree(linkage(squareform(distance, checks=False), method="average")))
    singles_and_pairs = [combo for size in (1, 2) for combo in itertools.combinations(tasks, size)]
    return list(dict.fromkeys(singles_and_pairs + clusters))


def affinity_scores(affinity: xr.DataArray) -> Candidates:
    """TAG's score of every candidate group from a ``(source, target)`` affinity (diagonal ignored).

    Every subset is a candidate up to :data:`EXACT_UP_TO` tasks; beyond, the heuristic's candidates.
    """
    tasks = [str(t) for t in affinity.source.values]
    if list(affinity.target.values) != list(affinity.source.values):
        raise ValueError("the affinity's source and target tasks must be the same, in the same order")
    if np.isnan(affinity.values[~np.eye(len(tasks), dtype=bool)]).any():
        raise ValueError("the affinity has missing (NaN) pairs; average it over more steps or drop the tasks without gradients")
    z = affinity.values.astype(float).copy()
    np.fill_diagonal(z, 0.0)
    groups = _all_subsets(tasks) if len(tasks) <= EXACT_UP_TO else _cluster_candidates(z, tasks)
    membership = np.array([[t in g for t in tasks] for g in groups])
    sizes = membership.sum(1, keepdims=True)
    mean_in = (membership.astype(float) @ z) / np.maximum(sizes - 1, 1)  # Σ_{j∈G} Z[j→t] / (|G| − 1)
    scores = np.where(membership, np.where(sizes > 1, mean_in, 0.0), -np.inf)
    return Candidates(tasks, groups, scores)


def measured_scores(transfer: xr.Dataset) -> Candidates:
    """Standley's scores from :func:`~workbench.studies.transfer.measure_transfer`: minus each member's validation loss."""
    tasks = [str(t) for t in transfer.task.values]
    loss = transfer.loss.sel(split="validation").mean("seed")
    groups = [tuple(t for t in tasks if bool(transfer.members.sel(subset=label, task=t))) for label in transfer.subset.values]
    scores = np.where(transfer.members.values, -loss.values, -np.inf)
    return Candidates(tasks, groups, scores)


def _value(best: np.ndarray) -> float:
    return float(best.mean()) if np.isfinite(best).all() else -np.inf


def _best_part_values(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every set P of tasks (a bit mask): the best total score of P's tasks in one candidate containing P, and that candidate."""
    n_candidates, n_tasks = scores.shape
    best = np.full(1 << n_tasks, -np.inf)
    source = np.full(1 << n_tasks, -1)
    for candidate in range(n_candidates):
        members = np.flatnonzero(np.isfinite(scores[candidate]))
        masks, sums = np.zeros(1, dtype=np.int64), np.zeros(1)
        for t in members:  # every subset of the candidate's members, with its total score
            masks = np.concatenate([masks, masks | (1 << int(t))])
            sums = np.concatenate([sums, sums + scores[candidate, t]])
        better = sums > best[masks]
        best[masks[better]], source[masks[better]] = sums[better], candidate
    best[0] = 0.0
    return best, source


def _submasks(mask: int) -> np.ndarray:
    """Every subset of a bit mask, as an array of masks."""
    result = np.zeros(1, dtype=np.int64)
    bit = 0
    while mask >> bit:
        if (mask >> bit) & 1:
            result = np.concatenate([result, result | (1 << bit)])
        bit += 1
    return result


def _exact(scores: np.ndarray, k: int) -> tuple[list[int], float]:
    """The optimum by dynamic programming over partitions of the tasks (O(k · 3^T)).

    Each task is served by one chosen group, so a solution partitions the tasks by serving group;
    a part ``P`` is worth the best total score of its tasks in one candidate containing it, and two
    parts never need the same candidate (merging them loses nothing). ``f_j(M)``, the best value of
    the task set ``M`` in at most ``j`` parts, takes its part through ``M``'s lowest task.
    """
    n_tasks = scores.shape[1]
    full = (1 << n_tasks) - 1
    part, source = _best_part_values(scores)
    value = part.copy()  # j = 1: the whole set in one part
    choice = [np.arange(1 << n_tasks)]  # the part through the lowest task, per j and mask
    for _ in range(1, k):
        new_value, new_choice = value.copy(), choice[-1].copy()
        for first in range(1, full + 1):
            if not np.isfinite(part[first]):
                continue
            low = first & -first
            rests = _submasks(full & ~first & ~((low << 1) - 1))[1:]  # non-empty, only tasks above the part's lowest
            totals = part[first] + value[rests]
            targets = first | rests
            better = totals > new_value[targets]
            new_value[targets[better]] = totals[better]
            new_choice[targets[better]] = first
        value, choice = new_value, choice + [new_choice]
    if not np.isfinite(value[full]):
        return [], -np.inf
    chosen, mask = [], full
    for level in range(len(choice) - 1, -1, -1):
        if mask == 0:
            break
        first = int(choice[level][mask]) if level > 0 else mask
        chosen.append(int(source[first]))
        mask &= ~first
    return sorted(set(chosen)), float(value[full] / n_tasks)


def _greedy_with_swaps(scores: np.ndarray, k: int) -> tuple[list[int], float]:
    """Greedy selection (covering first), then single swaps while they improve the value."""
    n_candidates, n_tasks = scores.shape
    floor = np.where(np.isfinite(scores), scores, np.inf).min(0) - 1.0
    chosen: list[int] = []
    current = np.full(n_tasks, -np.inf)
    for _ in range(k):
        baseline = np.maximum(current, floor)
        gains = np.maximum(scores - baseline, 0).sum(1)
        gains[chosen] = -1
        pick = int(np.argmax(gains))
        if gains[pick] <= 0:
            break
        chosen.append(pick)
        current = np.maximum(current, scores[pick])
    improved = True
    while improved:
        improved = False
        for position in range(len(chosen)):
            others = chosen[:position] + chosen[position + 1 :]
            base = scores[others].max(0) if others else np.full(n_tasks, -np.inf)
            values = np.array([_value(np.maximum(base, row)) for row in scores])
            values[others] = -np.inf
            candidate = int(np.argmax(values))
            if values[candidate] > _value(np.maximum(base, scores[chosen[position]])) + 1e-12:
                chosen[position] = candidate
                improved = True
    value = _value(scores[chosen].max(0)) if chosen else -np.inf
    return sorted(chosen), value


def select_groups(candidates: Candidates, k: int, exact: bool | None = None) -> tuple[list[tuple[str, ...]], float]:
    """The best at most ``k`` groups covering every task, and their value (mean served score).

    ``exact`` defaults to ``True`` up to :data:`EXACT_UP_TO` tasks and the heuristic beyond.
    Raises ``ValueError`` when no ``k`` candidate groups can cover every task.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    exact = len(candidates.tasks) <= EXACT_UP_TO if exact is None else exact
    if exact and len(candidates.tasks) > 16:
        raise ValueError(f"exact selection enumerates the 3^T partitions of the tasks; {len(candidates.tasks)} tasks are too many")
    chosen, value = (_exact if exact else _greedy_with_swaps)(candidates.scores, k)
    if not np.isfinite(value):
        raise ValueError(f"no {k} of the candidate groups cover every task {candidates.tasks}")
    return [candidates.groups[i] for i in chosen], value


def grouping_table(candidates: Candidates, max_groups: int):
    """The best groups for ``k = 1 … max_groups`` (a pandas DataFrame: groups and value per ``k``)."""
    import pandas as pd

    rows = []
    for k in range(1, max_groups + 1):
        try:
            groups, value = select_groups(candidates, k)
        except ValueError:
            continue
        rows.append({"k": k, "groups": " | ".join("+".join(g) for g in groups), "value": value, "networks": len(groups)})
    return pd.DataFrame(rows).set_index("k")
