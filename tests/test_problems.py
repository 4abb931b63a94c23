"""Ready problems: every dataset by name, in each of its data shapes, with the model that suits it; agreement of a probe over training."""

import re

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.probes.validation import rank_correlation_over_training
from workbench.studies.problems import DATA_SHAPES, DATASETS, load_problem
from workbench.tasks import TaskInputs
from workbench.train import train

SYNTHETIC = dict(n_tasks=3, n_samples=100, n_features=5, hidden=(8,))
DIGITS = dict(tasks=["left", "sum"], n_train=50, n_validation=10, n_test=10)
WORDS = dict(tasks=["vader_mean", "zipf"], max_words=40, trainable_layers=1)


@pytest.mark.parametrize(
    "dataset, options, layers, shared",
    [
        ("synthetic", SYNTHETIC, "tensor", ["0.weight", "0.bias"]),
        ("synthetic", dict(SYNTHETIC, data="missing_labels"), "tensor", ["0.weight", "0.bias"]),
        ("synthetic", dict(SYNTHETIC, data="per_task"), "tensor", ["0.weight", "0.bias"]),
        ("multidigits", DIGITS, "tensor", None),
        ("multidigits", dict(DIGITS, data="missing_labels"), "tensor", None),
        ("lexicon", WORDS, "block", None),
    ],
)
def test_each_dataset_comes_with_a_model_that_fits_it(dataset, options, layers, shared):
    problem = load_problem(dataset, seed=1, **options)
    assert problem.layers == layers and problem.splits.reference is not None
    model = problem.make_model(problem.splits.tasks)
    x, targets = problem.splits.validation.probe_batch(4)
    outputs = model(x)
    assert set(outputs) == set(problem.splits.task_names)
    assert all(torch.isfinite(v).all() for v in model.losses(x, targets).values())
    if shared is not None:
        assert [n for n, _ in model.shared_parameters()] == shared
    assert list(problem.splits.describe().index) == problem.splits.task_names


def test_missing_labels_thin_the_training_labels_and_the_description_counts_them():
    digits = load_problem("multidigits", seed=1, data="missing_labels", **DIGITS).splits.describe()
    assert digits[["train", "validation", "test"]].values.tolist() == [[25, 10, 10], [25, 10, 10]]  # labels_removed=0.5 by default
    synthetic = load_problem("synthetic", seed=1, data="missing_labels", labels_removed=0.3, **SYNTHETIC)
    assert synthetic.splits.describe()["train"].tolist() == [49] * 3 and synthetic.splits.attrs["labels_removed"] == 0.3
    x, _ = synthetic.splits.train.batch(0, 16)
    assert isinstance(x, TaskInputs)


def test_per_task_synthetic_tasks_have_samples_of_their_own_from_the_same_generator():
    shared = load_problem("synthetic", seed=1, **SYNTHETIC)
    per_task = load_problem("synthetic", seed=1, data="per_task", **SYNTHETIC)
    np.testing.assert_array_equal(per_task.truth["weights"], shared.truth["weights"])
    np.testing.assert_array_equal(per_task.splits.reference, shared.splits.reference)
    assert per_task.splits.describe()[["train", "validation", "test"]].values.tolist() == [[70, 10, 20]] * 3
    x, _ = per_task.splits.train.probe_batch(100)
    assert len(x.groups) == 3 and not any(torch.equal(x.groups[0][i], x.groups[1][j]) for i in range(70) for j in range(70))


def test_per_task_lexicon_fits_minilm_and_caches_its_frozen_blocks_once_per_source(monkeypatch):
    from workbench.models.transformers import TransformerEncoder

    cached = []
    original = TransformerEncoder.cache_frozen
    monkeypatch.setattr(TransformerEncoder, "cache_frozen", lambda self, x: cached.append(len(x["input_ids"])) or original(self, x))
    problem = load_problem("lexicon", seed=1, data="per_task", tasks=["vader_mean", "vader_spread", "afinn"], max_words=30, trainable_layers=1)
    assert cached == [22, 22, 4, 4, 4, 4]  # per split, VADER's words once for both its tasks, then AFINN's
    x, targets = problem.splits.train.probe_batch(30)
    assert len(x.groups) == 3 and all("frozen_hidden" in group for group in x.groups)
    model = problem.make_model(problem.splits.tasks)
    assert all(torch.isfinite(v).all() for v in model.losses(x, targets).values()) and problem.layers == "block"
    assert problem.splits.attrs["form"] == "per_task" and problem.splits.describe()["train"].tolist() == [22, 22, 22]


def test_the_image_folder_problem_trains_as_the_same_samples_in_memory(tmp_path):
    from_files = load_problem("multidigits", seed=1, data="image_folder", folder=tmp_path / "digits", channels=(8, 8), **DIGITS)
    in_memory = load_problem("multidigits", seed=1, channels=(8, 8), **DIGITS)
    quantised = in_memory.splits.map_inputs(lambda x: (x * 255).round() / 255)  # the 8-bit pixels of the files

    def run(problem, splits):
        torch.manual_seed(0)
        model = problem.make_model(splits.tasks)
        return train(model, splits.train, 12, eval_data=splits.validation, batch_size=16, eval_every=6, progress=False).history

    np.testing.assert_allclose(run(from_files, from_files.splits).metric.values, run(in_memory, quantised).metric.values, rtol=1e-5)
    assert from_files.splits.describe()["train"].tolist() == [50, 50]
    with pytest.raises(TypeError, match="map_inputs transforms inputs in memory; a StreamedData reads them from its dataset"):
        from_files.splits.map_inputs(lambda x: x)


def test_data_shapes_are_listed_per_dataset_and_others_refused():
    assert tuple(DATA_SHAPES) == DATASETS and all(shapes[0] == "shared" for shapes in DATA_SHAPES.values())
    with pytest.raises(ValueError, match=r"dataset 'lexicon' has no data shape 'missing_labels'; its shapes: \['shared', 'per_task'\]"):
        load_problem("lexicon", data="missing_labels")
    with pytest.raises(ValueError, match=r"dataset 'multidigits' has no data shape 'per_task'; its shapes: \['shared', 'missing_labels', 'image_folder'\]"):
        load_problem("multidigits", data="per_task")
    with pytest.raises(ValueError, match=r"labels_removed applies to data='missing_labels', not data='shared'"):
        load_problem("synthetic", labels_removed=0.2)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; available: " + re.escape(str(list(DATASETS)))):
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
