"""Every study runs on every shape of the synthetic problem (every task on the same samples, missing labels, one
dataset per task), and the side-by-side tables state a verdict either way."""

from functools import partial

import numpy as np
import pytest
import torch

from workbench.studies import (
    DATA_SHAPES, compare_methods, load_problem, methods_across_shapes, probes_across_shapes, saliency_during_training, study_task_grouping,
)

SHAPES = DATA_SHAPES["synthetic"]
ADAM = partial(torch.optim.Adam, lr=1e-2)


def problem(shape: str):
    return load_problem("synthetic", seed=0, data=shape, n_tasks=3, groups=[[0, 1]], n_samples=120, n_features=6, hidden=(8,))


@pytest.fixture(scope="module")
def comparisons():
    return {shape: compare_methods(problem(shape), ["ew", "mgda", "upgrad"], [0, 1], 12, batch_size=24, optimizer=ADAM, conflict_every=4, progress=False)
            for shape in SHAPES}


def test_the_methods_study_runs_on_every_shape_and_each_shape_has_its_own_baselines(comparisons):
    for shape, comparison in comparisons.items():
        assert np.isfinite(comparison.delta_m.values).all(), shape
        assert comparison.attrs["data"] != comparisons["shared"].attrs["data"] or shape == "shared"
    table, verdict = methods_across_shapes(comparisons)
    assert list(table.columns[: len(SHAPES)]) == [f"{shape} Δm%" for shape in SHAPES] and len(table) == 3
    assert verdict.startswith("best Δm% the same") or verdict.startswith("best Δm% differs")
    for shape in SHAPES[1:]:
        assert f"ρ(shared, {shape})" in verdict


def test_the_grouping_study_runs_on_every_shape():
    studies = {shape: study_task_grouping(problem(shape), 8, [0, 1], optimizer=ADAM, probe_every=4, max_groups=2, progress=False) for shape in SHAPES}
    for shape, study in studies.items():
        assert study.transfer.sizes["subset"] == 7, shape
        gain = study.transfer.gain.transpose("source", "target", ...).values
        assert np.isfinite(gain[~np.eye(3, dtype=bool)]).all() and np.isnan(gain[np.eye(3, dtype=bool)]).all(), shape
    table, verdict = probes_across_shapes(studies)
    assert list(table.columns) == list(SHAPES) and "tag_affinity" in table.index
    assert "best predictor of the measured transfer" in verdict


@pytest.mark.parametrize("shape", SHAPES)
def test_the_saliency_study_runs_on_every_shape(shape):
    run = saliency_during_training(problem(shape), 8, every=4, probe_size=16, progress=False)
    saliency, conflict = run.probes["saliency"], run.probes["conflict"]
    assert saliency.sizes["step"] == conflict.sizes["step"] == 2
    assert np.isfinite(conflict.cosine.values).all()
    if shape == "per_task":  # each task on its own samples: no sample to compare two tasks' saliency on
        off_diagonal = ~np.eye(3, dtype=bool)
        assert np.isnan(saliency.cosine.values[:, off_diagonal]).all()
    else:
        assert np.isfinite(saliency.cosine.values).all()
