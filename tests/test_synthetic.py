import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from workbench.data import block_similarity, make_synthetic
from workbench.data.synthetic import nearest_correlation
from workbench.probes import ProbeRecorder, gradient_conflict, mean_cosine
from workbench.probes.validation import pairwise_rank_correlation
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel
from workbench.train import train


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (make_synthetic(n_tasks=3, n_samples=50, seed=s) for s in (4, 4, 5))
    assert torch.equal(a.data.x, b.data.x)
    assert all(torch.equal(a.data.targets[n], b.data.targets[n]) for n in a.data.task_names)
    assert not torch.equal(a.data.x, c.data.x)


def test_block_similarity_is_a_valid_correlation_matrix():
    c = block_similarity(6, groups=[[0, 1, 2], [3, 4]], anti_pairs=[(0, 5)], within=0.8, anti=-0.7)
    np.testing.assert_allclose(np.diag(c), 1.0)
    np.testing.assert_allclose(c, c.T)
    assert np.linalg.eigvalsh(c).min() > -1e-9
    assert c[3, 4] == pytest.approx(0.8)
    assert c[0, 3] == pytest.approx(0, abs=1e-9) and c[1, 4] == pytest.approx(0, abs=1e-9)
    assert c[0, 5] < -0.5


def test_planted_similarity_is_the_weights_correlation():
    problem = make_synthetic(n_tasks=4, n_samples=10, n_features=20_000, groups=[[0, 1]], anti_pairs=[(2, 3)], seed=0)
    w = problem.weights.values
    measured = np.corrcoef(w)
    np.testing.assert_allclose(measured, problem.similarity.values, atol=0.03)
    assert problem.similarity.dims == ("task", "other_task")


def test_realised_similarity_is_the_cosine_of_the_drawn_weights_and_the_reference():
    problem = make_synthetic(n_tasks=4, n_samples=10, n_features=8, groups=[[0, 1]], anti_pairs=[(2, 3)], seed=0)
    w = problem.weights.values
    for i in range(4):
        for j in range(4):
            cosine = w[i] @ w[j] / np.linalg.norm(w[i]) / np.linalg.norm(w[j])
            assert problem.realised.values[i, j] == pytest.approx(cosine)
    assert np.abs(problem.realised.values - problem.similarity.values).max() > 0.05  # few features: sampling noise shows
    xr.testing.assert_equal(problem.splits().reference, problem.realised)


def test_targets_kinds_outliers_and_noise():
    problem = make_synthetic(n_tasks=4, n_samples=400, groups=[[0, 1, 2, 3]], classification=[1], outliers=[3], noise=0.0, seed=1)
    assert set(problem.data.targets["t1"].unique().tolist()) == {0.0, 1.0}
    assert problem.data.tasks[1].kind == "classification"
    assert problem.similarity.sel(task="t3", other_task="t0") == pytest.approx(0.0, abs=1e-6)
    assert problem.similarity.sel(task="t0", other_task="t2") > 0.8
    # noise 0 and complexity 0: t0 is exactly linear in x
    x = problem.data.x.double().numpy()
    coef, residual, *_ = np.linalg.lstsq(x, problem.data.targets["t0"].double().numpy(), rcond=None)
    assert residual[0] < 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(groups=[[0, 9]]), "out of range"),
        (dict(groups=[[0, 1], [1, 2]]), "two groups"),
        (dict(anti_pairs=[(1, 1)]), "names one task twice"),
        (dict(similarity=np.eye(2)), "shape"),
        (dict(noise=-1.0), "noise"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic(n_tasks=3, n_samples=10, **kwargs)


def test_planted_blocks_are_visible_in_measured_cosine():
    problem = make_synthetic(n_tasks=6, n_samples=1000, groups=[[0, 1, 2], [3, 4, 5]], within=0.9, noise=0.05, seed=0)
    torch.manual_seed(0)
    model = MultiTaskModel(mlp_encoder(16, (32, 32)), problem.data.tasks, representation_dim=32)
    recorder = ProbeRecorder(gradient_conflict, every=5)
    train(model, problem.data, 100, recorders=[recorder], progress=False)
    measured = mean_cosine(recorder.history)
    same = [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]
    cross = [(i, j) for i in range(3) for j in range(3, 6)]
    value = lambda i, j: float(measured.isel(task=i, other_task=j))  # noqa: E731
    assert min(value(i, j) for i, j in same) > max(value(i, j) for i, j in cross)
    assert pairwise_rank_correlation(problem.similarity, measured) > 0.6


@settings(deadline=None)
@given(arrays(np.float64, (5, 5), elements=st.floats(-1, 1)))
def test_nearest_correlation_always_gives_a_valid_correlation_matrix(raw):
    c = nearest_correlation(raw)
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-9)
    np.testing.assert_allclose(c, c.T)
    assert np.linalg.eigvalsh(c).min() > -1e-9
    assert np.all(np.abs(c) <= 1 + 1e-9)


def test_sparse_tasks_read_few_features_and_a_group_reads_the_same_ones():
    dense = make_synthetic(n_tasks=4, n_features=12, groups=[[0, 1]], seed=3)
    sparse = make_synthetic(n_tasks=4, n_features=12, groups=[[0, 1]], active_features=3, seed=3)
    reads = sparse.weights.values != 0
    assert (reads.sum(1) == 3).all()
    assert (reads[0] == reads[1]).all()
    kept = reads[2]
    np.testing.assert_array_equal(sparse.weights.values[2, kept], dense.weights.values[2, kept])  # the same draws, masked
    with pytest.raises(ValueError, match="active_features must be between 1 and n_features = 12"):
        make_synthetic(n_tasks=2, n_features=12, active_features=13)
