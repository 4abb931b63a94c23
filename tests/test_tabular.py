"""The tabular tasks (MultiTab-Bench's generator): exact planted cosines, the polynomial targets, categorical features."""

from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.data import make_tabular
from workbench.studies import load_problem
from workbench.train import train


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.floats(0.0, 1.0), st.integers(0, 1000))
def test_the_weight_vectors_have_exactly_the_planted_cosine(n_tasks, share, seed):
    p = -1 / (n_tasks - 1) + share * (1 + 1 / (n_tasks - 1))  # anywhere in the admissible [-1/(T-1), 1]
    tabular = make_tabular(n_tasks=n_tasks, n_features=n_tasks + 3, correlation=p, n_samples=10, seed=seed)
    w = tabular.weights.values
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(w @ w.T, tabular.similarity.values, atol=1e-9)
    np.testing.assert_allclose(tabular.realised.values, tabular.similarity.values, atol=1e-9)


def test_a_planted_block_structure_is_the_ground_truth():
    blocks = np.array([[1, 0.8, 0, 0], [0.8, 1, 0, 0], [0, 0, 1, -0.5], [0, 0, -0.5, 1]])
    tabular = make_tabular(n_tasks=4, n_features=6, correlation=blocks, n_samples=10)
    np.testing.assert_allclose(tabular.realised.values, blocks, atol=1e-9)
    problem = load_problem("tabular", n_tasks=4, n_features=6, correlation=blocks, n_samples=200)
    np.testing.assert_allclose(problem.splits.reference.values, blocks, atol=1e-9)


def test_the_targets_are_the_polynomials_of_the_projections():
    tabular = make_tabular(n_tasks=3, n_features=5, degrees=[1, 2, 4], noise=0.0, n_samples=50, seed=3)
    s = tabular.data.x.double().numpy() @ tabular.weights.values.T
    expected = [s[:, 0], s[:, 1] + s[:, 1] ** 2, s[:, 2] + s[:, 2] ** 2 + s[:, 2] ** 3 + s[:, 2] ** 4]
    for t, want in enumerate(expected):
        np.testing.assert_allclose(tabular.data.targets[f"t{t}"].numpy(), want, rtol=1e-5, atol=1e-5)
    noisy = make_tabular(n_tasks=3, n_features=5, degrees=[1, 2, 4], noise=[0.0, 0.5, 0.0], n_samples=2000, seed=3)
    residual = noisy.data.targets["t1"].numpy() - (lambda v: v + v**2)(noisy.data.x.double().numpy() @ noisy.weights.values[1])
    assert 0.45 < residual.std() < 0.55


def test_categorical_features_arrive_one_hot_and_carry_their_bin_s_mean():
    tabular = make_tabular(n_tasks=2, n_features=4, categorical=2, categories=3, noise=0.0, degrees=1, n_samples=3000, seed=1)
    x = tabular.data.x.numpy()
    assert x.shape == (3000, 2 + 2 * 3)
    one_hot = x[:, 2:].reshape(3000, 2, 3)
    assert set(np.unique(one_hot)) == {0.0, 1.0} and (one_hot.sum(-1) == 1).all()
    np.testing.assert_allclose(one_hot.mean(0), 1 / 3, atol=0.03)  # bins of equal probability
    means = np.array([-1.0911, 0.0, 1.0911])  # E[x | bin] of N(0, 1) cut at its terciles
    read = np.concatenate([x[:, :2], one_hot @ means], axis=1)
    np.testing.assert_allclose(tabular.data.targets["t0"].numpy(), read @ tabular.weights.values[0], atol=1e-3)


@pytest.mark.parametrize("options, message", [
    ({"n_tasks": 4, "correlation": -0.5}, r"correlation -0.5 is no pairwise cosine of 4 unit vectors; it must lie in \[-0.3333, 1\]"),
    ({"n_tasks": 5, "n_features": 4}, "1 <= n_tasks <= n_features"),
    ({"n_tasks": 2, "correlation": np.array([[1, 2], [2, 1]])}, "no correlation matrix"),
    ({"n_tasks": 2, "degrees": [1, 0]}, "degrees must be at least 1"),
    ({"n_tasks": 2, "degrees": [1, 2, 3]}, r"degrees must be one value or one per task \(2\), got 3"),
    ({"n_tasks": 2, "noise": -1.0}, "noise non-negative"),
    ({"categorical": 40}, r"categorical must lie in \[0, 32\]"),
])
def test_bad_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        make_tabular(**options)


def test_the_same_seed_gives_the_same_tasks_and_the_problem_trains():
    a, b = make_tabular(n_samples=100, seed=4), make_tabular(n_samples=100, seed=4)
    assert torch.equal(a.data.x, b.data.x) and all(torch.equal(a.data.targets[t], b.data.targets[t]) for t in a.data.targets)
    problem = load_problem("tabular", data="missing_labels", n_samples=400, hidden=(16,))
    torch.manual_seed(0)
    run = train(problem.make_model(problem.splits.tasks, architecture="mmoe"), problem.splits.train, 200, batch_size=32,
                optimizer=partial(torch.optim.Adam, lr=1e-2), progress=False)
    losses = run.history.train_loss.values
    assert np.isfinite(losses).all() and losses[-20:].mean() < 0.5 * losses[:20].mean()
