"""Choosing groups of tasks: the exact search against brute force, the heuristic, and planted blocks."""

import itertools
from functools import partial

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.probes import ProbeRecorder, cosine_affinity, tag_affinity, task_matrix
from workbench.probes.grouping import Candidates, affinity_scores, grouping_table, select_groups
from workbench.studies.problems import load_problem
from workbench.train import train


def _affinity(matrix: np.ndarray) -> xr.DataArray:
    names = [f"t{i}" for i in range(len(matrix))]
    return xr.DataArray(matrix, dims=("source", "target"), coords={"source": names, "target": names})


def _brute_force(scores: np.ndarray, k: int) -> float:
    """The best mean served score over every choice of at most ``k`` candidates."""
    best = -np.inf
    for size in range(1, k + 1):
        for chosen in itertools.combinations(range(len(scores)), size):
            served = scores[list(chosen)].max(0)
            if np.isfinite(served).all():
                best = max(best, float(served.mean()))
    return best


def _served_value(candidates: Candidates, groups) -> float:
    rows = [candidates.groups.index(g) for g in groups]
    return float(candidates.scores[rows].max(0).mean())


@settings(deadline=None)
@given(n_tasks=st.integers(2, 5), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_exact_selection_equals_brute_force_on_tag_scores(n_tasks, k, seed):
    candidates = affinity_scores(_affinity(np.random.default_rng(seed).normal(size=(n_tasks, n_tasks))))
    groups, value = select_groups(candidates, k)
    assert len(groups) <= k
    assert value == pytest.approx(_brute_force(candidates.scores, k), abs=1e-12)
    assert value == pytest.approx(_served_value(candidates, groups), abs=1e-12)


@settings(deadline=None)
@given(n_tasks=st.integers(2, 4), n_candidates=st.integers(2, 7), k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_exact_selection_equals_brute_force_on_any_candidates(n_tasks, n_candidates, k, seed):
    """Arbitrary candidate groups (some tasks in none): the optimum, or an error when nothing covers."""
    rng = np.random.default_rng(seed)
    membership = rng.random((n_candidates, n_tasks)) < 0.6
    scores = np.where(membership, rng.normal(size=membership.shape), -np.inf)
    tasks = [f"t{i}" for i in range(n_tasks)]
    candidates = Candidates(tasks, [tuple(t for t, m in zip(tasks, row) if m) for row in membership], scores)
    truth = _brute_force(scores, k)
    if not np.isfinite(truth):
        with pytest.raises(ValueError, match="cover every task"):
            select_groups(candidates, k)
        return
    chosen, value = select_groups(candidates, k)
    assert value == pytest.approx(truth, abs=1e-12)


@settings(deadline=None)
@given(n_tasks=st.integers(3, 8), k=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_the_heuristic_never_beats_the_optimum_and_always_covers(n_tasks, k, seed):
    candidates = affinity_scores(_affinity(np.random.default_rng(seed).normal(size=(n_tasks, n_tasks))))
    exact = select_groups(candidates, k, exact=True)[1]
    groups, value = select_groups(candidates, k, exact=False)
    assert value <= exact + 1e-12
    assert {t for g in groups for t in g} == set(candidates.tasks)
    assert value == pytest.approx(_served_value(candidates, groups), abs=1e-12)


def _planted_blocks(n_blocks: int, size: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block = np.repeat(np.arange(n_blocks), size)
    return np.where(block[:, None] == block[None, :], 1.0, -0.2) + noise * rng.normal(size=(n_blocks * size,) * 2)


@pytest.mark.parametrize("n_blocks, size", [(3, 4), (8, 8)])
def test_selection_recovers_noisy_planted_blocks_exactly_and_by_heuristic(n_blocks, size):
    """12 tasks go through the exact search, 64 through the heuristic (a fraction of a second)."""
    affinity = _affinity(_planted_blocks(n_blocks, size, seed=n_blocks))
    groups, _ = select_groups(affinity_scores(affinity), n_blocks)
    blocks = {tuple(f"t{b * size + i}" for i in range(size)) for b in range(n_blocks)}
    assert set(groups) == blocks


def test_exact_search_refuses_too_many_tasks_and_k_below_one():
    candidates = affinity_scores(_affinity(np.zeros((17, 17))))
    with pytest.raises(ValueError, match="17 tasks are too many"):
        select_groups(candidates, 2, exact=True)
    with pytest.raises(ValueError, match="k must be at least 1"):
        select_groups(candidates, 0)


def test_an_affinity_with_missing_pairs_or_other_targets_is_refused():
    matrix = np.ones((3, 3))
    matrix[0, 1] = np.nan
    with pytest.raises(ValueError, match="missing"):
        affinity_scores(_affinity(matrix))
    with pytest.raises(ValueError, match="same, in the same order"):
        affinity_scores(_affinity(np.ones((3, 3))).assign_coords(target=["t2", "t1", "t0"]))


def test_grouping_table_lists_the_best_groups_for_each_k():
    candidates = affinity_scores(_affinity(_planted_blocks(2, 3, seed=0)))
    table = grouping_table(candidates, 3)
    assert table.index.tolist() == [1, 2, 3]
    assert table.loc[2, "groups"] == "t0+t1+t2 | t3+t4+t5"
    assert table.value.is_monotonic_increasing  # more networks never serve worse


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("probe", [tag_affinity, cosine_affinity])
def test_groups_from_measured_affinity_recover_planted_blocks(seed, probe):
    """Two blocks of three strongly related tasks, trained with SGD and momentum: the affinity
    measured during training, averaged, chooses the planted blocks for two networks."""
    problem = load_problem("synthetic", seed=seed, n_tasks=6, groups=[[0, 1, 2], [3, 4, 5]], within=0.95, n_features=64, n_samples=512, hidden=(32, 32))
    recorder = ProbeRecorder(probe, every=5)
    torch.manual_seed(seed)
    model = problem.make_model(problem.splits.tasks)
    train(model, problem.splits.train, 60, optimizer=partial(torch.optim.SGD, lr=0.02, momentum=0.9), batch_size=64, recorders=[recorder], seed=seed, progress=False)
    groups, _ = select_groups(affinity_scores(task_matrix(recorder.history)), 2)
    assert set(groups) == {("t0", "t1", "t2"), ("t3", "t4", "t5")}
