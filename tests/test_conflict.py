import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from tests.conftest import tiny_batch
from workbench.probes import (
    ProbeRecorder,
    conflict_frequency,
    gradient_conflict,
    gramian_statistics,
    mean_cosine,
    s_conflict_score,
)
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel, Task


def _mean_output(output, target):
    return output.mean()


def _neg_mean_output(output, target):
    return -output.mean()


def _constant(output, target):
    return output.sum() * 0.0


def _task(name, loss):
    return Task(name, "regression", loss, loss, "loss", higher_is_better=False)


def shared_head_model(losses):
    """Every task reads the same head, so a task's gradient is fixed by its loss function alone."""
    torch.manual_seed(0)
    head = nn.Linear(4, 1)
    tasks = [_task(name, loss) for name, loss in losses.items()]
    return MultiTaskModel(mlp_encoder(3, (5, 4), nn.Tanh), tasks, heads={name: head for name in losses})


def _batch(model):
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), {n: torch.zeros(8) for n in model.task_names}


def test_identical_tasks_have_cosine_one_and_negated_tasks_minus_one():
    model = shared_head_model({"a": _mean_output, "same": _mean_output, "negated": _neg_mean_output})
    ds = gradient_conflict(model, _batch(model))
    cos = ds.cosine
    assert cos.sel(task="a", other_task="same") == pytest.approx(1.0, abs=1e-6)
    assert cos.sel(task="a", other_task="negated") == pytest.approx(-1.0, abs=1e-6)
    assert ds.conflict.sel(task="a", other_task="negated") == 1.0
    assert ds.conflict.sel(task="a", other_task="same") == 0.0
    assert ds.magnitude_similarity.sel(task="a", other_task="negated") == pytest.approx(1.0)
    np.testing.assert_allclose(ds.layer_cosine.sel(task="a", other_task="negated"), -1.0, atol=1e-6)


def test_zero_gradient_task_is_missing_not_measured():
    model = shared_head_model({"a": _mean_output, "b": _neg_mean_output, "dead": _constant})
    ds = gradient_conflict(model, _batch(model))
    assert ds.grad_norm.sel(task="dead") == 0.0
    for var in ("cosine", "magnitude_similarity", "conflict"):
        assert ds[var].sel(task="dead").isnull().all()
        assert ds[var].sel(other_task="dead").isnull().all()
        assert ds[f"layer_{var}"].sel(task="dead").isnull().all()
    assert ds.cosine.sel(task="a", other_task="b").notnull()


def test_dataset_layout(model, batch):
    ds = gradient_conflict(model, batch, threshold=-0.1, by="module")
    assert ds.cosine.dims == ("task", "other_task")
    assert ds.layer_cosine.dims == ("layer", "task", "other_task")
    assert list(ds.layer.values) == ["0", "2"]
    assert ds.attrs == {"probe": "gradient_conflict", "threshold": -0.1, "by": "module", "strategy": ds.attrs["strategy"]}
    assert ds.attrs["strategy"] in ("batched", "loop", "direct")
    np.testing.assert_allclose(ds.cosine, ds.cosine.T)
    np.testing.assert_allclose(np.diag(ds.cosine), 1.0)


def test_cosine_matches_direct_computation(model, batch):
    ds = gradient_conflict(model, batch)
    grads = []
    for name in model.task_names:
        loss = model.losses(*batch)[name]
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [p for _, p in model.shared_parameters()])]))
    g = torch.stack(grads).double()
    expected = torch.nn.functional.cosine_similarity(g[:, None], g[None, :], dim=-1)
    np.testing.assert_allclose(ds.cosine.values, expected.numpy(), atol=1e-6)
    norms = g.norm(dim=1)
    phi = 2 * norms[:, None] * norms[None, :] / (norms[:, None] ** 2 + norms[None, :] ** 2)
    np.testing.assert_allclose(ds.magnitude_similarity.values, phi.numpy(), atol=1e-6)


# entries are 0 or at least 1e-3 in magnitude: squares of ~1e-160 underflow, which says nothing about the probe
_ENTRIES = st.one_of(st.just(0.0), st.floats(1e-3, 10), st.floats(-10, -1e-3))


@settings(deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 5), st.integers(1, 6)), elements=_ENTRIES), st.data())
def test_statistics_are_permutation_equivariant_and_scale_invariant(jacobian, data):
    t = jacobian.shape[0]
    permutation = data.draw(st.permutations(range(t)))
    scale = data.draw(st.floats(0.1, 10))
    j = torch.tensor(jacobian)
    base = gramian_statistics(j @ j.T)
    permuted = gramian_statistics(j[permutation] @ j[permutation].T)
    scaled = gramian_statistics((scale * j) @ (scale * j).T)
    for key in ("cosine", "magnitude_similarity"):
        np.testing.assert_allclose(permuted[key], base[key][np.ix_(permutation, permutation)], atol=1e-9)
        np.testing.assert_allclose(scaled[key], base[key], atol=1e-9)
    defined = ~np.isnan(base["cosine"])
    assert np.all(np.abs(base["cosine"][defined]) <= 1)
    assert np.all(base["magnitude_similarity"][defined] <= 1 + 1e-12)


def test_pinned_values():
    stats = gramian_statistics(torch.tensor([[4.0, -2.0], [-2.0, 1.0]]))
    np.testing.assert_allclose(stats["cosine"], [[1, -1], [-1, 1]])
    np.testing.assert_allclose(stats["magnitude_similarity"], [[1, 0.8], [0.8, 1]])
    np.testing.assert_allclose(stats["grad_norm"], [2, 1])


def _history(cosines):
    """A recorded history from a list of (layer, 2, 2) per-step cosine stacks."""
    layer = np.array(cosines)
    return xr.Dataset(
        {"layer_cosine": (("step", "layer", "task", "other_task"), layer), "cosine": (("step", "task", "other_task"), layer.mean(1))},
        coords={"step": np.arange(len(cosines)), "layer": ["l0", "l1"], "task": ["a", "b"], "other_task": ["a", "b"]},
        attrs={"threshold": 0.0},
    )


def test_summaries_over_training():
    c = lambda v: [[1, v], [v, 1]]  # noqa: E731
    history = _history([[c(-0.5), c(0.3)], [c(-0.05), c(np.nan)], [c(0.2), c(-0.01)]])
    frequency = conflict_frequency(history)
    np.testing.assert_allclose(frequency.layer_frequency.sel(task="a", other_task="b"), [2 / 3, 1 / 2])
    assert s_conflict_score(history, 0.0).values.tolist() == [2, 1]
    assert s_conflict_score(history, -0.02).values.tolist() == [2, 0]
    assert s_conflict_score(history, -0.1).values.tolist() == [1, 0]
    assert conflict_frequency(history, threshold=-0.1).layer_frequency.sel(task="a", other_task="b").values.tolist() == [1 / 3, 0]
    assert mean_cosine(history).dims == ("task", "other_task")


def test_recorder_samples_every_k_steps(model, batch):
    recorder = ProbeRecorder(gradient_conflict, every=3, threshold=-0.2)
    assert recorder.latest is None
    recorded = [recorder.maybe_record(step, model, batch) for step in range(7)]
    assert recorded == [True, False, False, True, False, False, True]
    history = recorder.history
    xr.testing.assert_identical(recorder.latest.drop_attrs(), history.isel(step=[-1]).drop_attrs())
    assert history.step.values.tolist() == [0, 3, 6]
    assert history.attrs["threshold"] == -0.2 and history.attrs["every"] == 3
    assert history.attrs["batch"] == "training"


def test_recorder_measures_on_a_fixed_batch_when_given(model, batch):
    other = tiny_batch(model, seed=5)
    fixed = ProbeRecorder(gradient_conflict, every=1, batch=other)
    fixed.maybe_record(0, model, batch)
    xr.testing.assert_allclose(fixed.history.isel(step=0, drop=True).drop_attrs(), gradient_conflict(model, other).drop_attrs())
    assert fixed.history.attrs["batch"] == "fixed"


def test_recorder_refuses_bad_interval_and_empty_history():
    with pytest.raises(ValueError, match="every"):
        ProbeRecorder(gradient_conflict, every=0)
    with pytest.raises(RuntimeError, match="recorded nothing"):
        ProbeRecorder(gradient_conflict).history


def test_probe_names_a_task_without_targets(model, batch):
    x, targets = batch
    del targets["t1"]
    with pytest.raises(KeyError, match=r"no targets for tasks \['t1'\]"):
        gradient_conflict(model, (x, targets))
