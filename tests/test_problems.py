"""Ready problems: every dataset by name with the model that suits it; agreement of a probe over training."""

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.probes.validation import rank_correlation_over_training
from workbench.studies.problems import load_problem


@pytest.mark.parametrize(
    "dataset, options, layers, shared",
    [
        ("synthetic", dict(n_tasks=3, n_samples=100, n_features=5, hidden=(8,)), "tensor", ["0.weight", "0.bias"]),
        ("multidigits", dict(tasks=["left", "sum"], n_train=50, n_validation=10, n_test=10), "tensor", None),
        ("lexicon", dict(tasks=["vader_mean", "zipf"], max_words=40, trainable_layers=1), "block", None),
    ],
)
def test_each_dataset_comes_with_a_model_that_fits_it(dataset, options, layers, shared):
    problem = load_problem(dataset, seed=1, **options)
    assert problem.layers == layers and problem.splits.reference is not None
    model = problem.make_model(problem.splits.tasks)
    batch = problem.splits.train.head(4)
    outputs = model(batch.x)
    assert set(outputs) == set(problem.splits.task_names)
    assert all(torch.isfinite(v).all() for v in model.losses(batch.x, batch.targets).values())
    if shared is not None:
        assert [n for n, _ in model.shared_parameters()] == shared
    assert list(problem.splits.describe().index) == problem.splits.task_names


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; available: \['synthetic', 'multidigits', 'lexicon'\]"):
        load_problem("mnist")


def test_rank_correlation_over_training_follows_the_window():
    tasks = ["a", "b", "c", "d"]
    truth = xr.DataArray(np.array([[1, 0.9, 0.1, 0.0], [0.9, 1, 0.2, 0.1], [0.1, 0.2, 1, 0.5], [0.0, 0.1, 0.5, 1]]), dims=("task", "other_task"), coords={"task": tasks, "other_task": tasks})
    agreeing, reversed_ = truth.values, -truth.values
    measured = xr.DataArray(np.stack([agreeing, agreeing, reversed_, reversed_]), dims=("step", "task", "other_task"), coords={"step": [0, 10, 20, 30], "task": tasks, "other_task": tasks})
    curve = rank_correlation_over_training(truth, measured, window=1)
    np.testing.assert_allclose(curve.values, [1, 1, -1, -1])
    smoothed = rank_correlation_over_training(truth, measured, window=2)
    np.testing.assert_allclose(smoothed.values, [1, 1, np.nan, -1])  # at step 20 the window's mean is all zeros: no ranking
    with pytest.raises(ValueError, match="window"):
        rank_correlation_over_training(truth, measured, window=0)
