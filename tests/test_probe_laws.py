"""The laws every registered probe obeys, run over the whole registry: a probe is tested the moment it is registered.

On an MLP and on a CNN with batch norm and dropout (in training mode, as a recorder finds the model): each probe
returns a labelled Dataset, leaves the model, its buffers and the random generators as it found them, and its
task × task reading is a ``(source, target)`` matrix over the model's tasks; a run with every probe recorded ends
as the same run without."""

import math

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from tests.conftest import tiny_batch, tiny_model
from workbench.models import mlp_encoder
from workbench.models.mmoe import MMoEEncoder, slot_heads
from workbench.probes import PROBES, ProbeRecorder, applies_to, make_probe, task_matrix
from workbench.tasks import MultiTaskData, MultiTaskModel, TaskInputs, classification_task, masked_batch, regression_task
from workbench.train import train

TASKS = [regression_task("a"), classification_task("b", 3), regression_task("c")]


def cnn_with_norm_and_dropout(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    return MultiTaskModel(encoder, TASKS, representation_dim=(3, 4, 4))


def cnn_batch(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), {"a": torch.randn(n, generator=g), "b": torch.randint(0, 3, (n,), generator=g), "c": torch.randn(n, generator=g)}


MODELS = {"MLP": lambda: (tiny_model(), tiny_batch(tiny_model())), "CNN with batch norm and dropout": lambda: (cnn_with_norm_and_dropout(), cnn_batch())}


def gated(model: MultiTaskModel, x, seed: int = 0) -> MultiTaskModel:
    """An MMoE with ``model``'s encoder as its trunk (two MLP experts of 5 units on its flattened features)."""
    torch.manual_seed(seed)
    sample = x.groups[0] if isinstance(x, TaskInputs) else x
    with torch.no_grad():
        features = math.prod(model.encoder.eval()(sample[:2]).shape[1:])
    model.encoder.train()
    tasks = list(model.tasks.values())
    encoder = MMoEEncoder(model.task_names, features, lambda: mlp_encoder(features, (5,)), 2, trunk=model.encoder)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, 5))


def subject(name: str, model: MultiTaskModel, batch) -> MultiTaskModel:
    """``model``, or the gated model on its encoder for a probe that reads gates."""
    return gated(model, batch[0]) if PROBES[name].traits.get("needs") == "gates" else model


def stepped_optimizer(model, batch):
    """Adam after one step on ``batch``: it has state for TAG's lookahead to read."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(3)
    sum(model.losses(*batch).values()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def call(name, model, batch, optimizer):
    probe = make_probe(name)
    return probe(model, batch, **({"optimizer": optimizer} if probe.takes("optimizer") else {}))


def snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, torch.get_rng_state()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", list(PROBES))
def test_a_probe_leaves_the_model_its_buffers_and_the_random_state_as_it_found_them(name, model_name):
    model, batch = MODELS[model_name]()
    model = subject(name, model, batch)
    optimizer = stepped_optimizer(model, batch)
    model.train()
    (state, rng), optimizer_state = snapshot(model), optimizer.state_dict()
    call(name, model, batch, optimizer)
    after, rng_after = snapshot(model)
    for key in state:
        assert torch.equal(after[key], state[key]), f"{name} changed {key}"
    assert torch.equal(rng_after, rng), f"{name} drew from the random generator"
    assert model.training and all(p.grad is None for p in model.parameters())
    assert optimizer.state_dict()["state"].keys() == optimizer_state["state"].keys()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", list(PROBES))
def test_a_probe_returns_a_labelled_dataset_and_its_pairwise_reading_is_a_task_matrix(name, model_name):
    model, batch = MODELS[model_name]()
    model = subject(name, model, batch)
    result = call(name, model, batch, stepped_optimizer(model, batch))
    assert isinstance(result, xr.Dataset) and result.attrs["probe"] == name
    entry = PROBES[name]
    if not entry.traits["pairwise"]:
        with pytest.raises(ValueError, match=f"probe {name!r} has no task × task reading"):
            task_matrix(result)
        return
    matrix = task_matrix(result)
    assert matrix.dims == ("source", "target") and list(matrix.source.values) == model.task_names == list(matrix.target.values)
    values = matrix.values
    assert not np.isinf(values).any()
    if not entry.traits["directed"]:
        np.testing.assert_allclose(values, values.T, atol=1e-6, err_msg=f"{name} says it is symmetric")
    if entry.traits.get("layered"):
        layer = str(result.layer.values[0])
        assert task_matrix(result, layer=layer).shape == values.shape


@pytest.mark.parametrize("architecture", ["hard sharing", "gated"])
def test_a_run_with_every_probe_recorded_ends_as_the_run_without(architecture):
    x, targets = cnn_batch(n=32)
    data = MultiTaskData(x, targets, TASKS)
    held_out = cnn_batch(n=8, seed=9)

    def fresh():
        model = cnn_with_norm_and_dropout()
        return gated(model, x) if architecture == "gated" else model

    plain = train(fresh(), data, 6, method="ew", batch_size=8, progress=False)
    applying = [name for name in PROBES if applies_to(name, fresh())]
    recorders = [ProbeRecorder(name, every=1, batch=None if PROBES[name].traits["batch"] == "training" else held_out) for name in applying]
    watched = train(fresh(), data, 6, method="ew", batch_size=8, recorders=recorders, progress=False)
    for (key, a), (_, b) in zip(plain.model.state_dict().items(), watched.model.state_dict().items()):
        assert torch.equal(a, b), key
    np.testing.assert_array_equal(plain.history.train_loss.values, watched.history.train_loss.values)
    assert set(watched.probes) == set(applying) and all(h.sizes["step"] == 6 for h in watched.probes.values())
    assert ("expert_gates" in applying) == (architecture == "gated")


@pytest.mark.parametrize("name", list(PROBES))
def test_an_unknown_option_is_refused_and_every_entry_states_what_it_is(name):
    with pytest.raises(ValueError, match=f"probe {name!r} has no options \\['no_such_option'\\]"):
        make_probe(name, no_such_option=1)
    with pytest.raises(ValueError, match=f"probe {name!r} has no options"):
        ProbeRecorder(name, no_such_option=1)
    entry = PROBES[name]
    assert entry.family in {"conflict", "affinity", "saliency", "experts"} and entry.summary and entry.paper
    assert entry.traits["batch"] in {"training", "held_out"}


def masked_cnn_batch():
    """``a`` labelled on 6 of 10 samples, ``b`` on all, ``c`` on none."""
    x, targets = cnn_batch()
    return masked_batch(x, targets, {"a": torch.arange(10) % 5 < 3, "c": torch.zeros(10, dtype=torch.bool)})


def per_task_cnn_batch():
    """A batch per task: each task's own 6 samples, the encoder run once per task."""
    groups = [cnn_batch(n=6, seed=seed) for seed in (11, 12, 13)]
    return TaskInputs(tuple(x for x, _ in groups), {task: (g, None) for g, task in enumerate("abc")}), {t: groups[g][1][t] for g, t in enumerate("abc")}


def _task_dims(variable: xr.DataArray) -> list[str]:
    return [d for d in variable.dims if d in ("task", "other_task", "source", "target")]


@pytest.mark.parametrize("name", list(PROBES))
def test_a_probe_reports_nan_for_a_task_labelled_nowhere_in_the_batch_and_measures_the_others(name):
    batch = masked_cnn_batch()
    model = subject(name, cnn_with_norm_and_dropout(), batch)
    result = call(name, model, batch, stepped_optimizer(model, cnn_batch()))
    with_tasks = [v for v in result.data_vars.values() if _task_dims(v)]
    assert with_tasks, f"{name} has no per-task variable to check"
    for variable in with_tasks:
        for dim in _task_dims(variable):
            assert np.isnan(variable.sel({dim: "c"}).values).all(), f"{name}: {variable.name} has a number for the unlabelled task c along {dim}"
    if PROBES[name].traits["pairwise"]:
        measured = task_matrix(result).sel(source=["a", "b"], target=["a", "b"]).values
        assert np.isfinite(measured).all(), f"{name}: the labelled tasks a and b were not measured: {measured}"


@pytest.mark.parametrize("name", list(PROBES))
def test_a_probe_runs_on_a_batch_per_task(name):
    batch = per_task_cnn_batch()
    model = subject(name, cnn_with_norm_and_dropout(), batch)
    result = call(name, model, batch, stepped_optimizer(model, cnn_batch()))
    assert isinstance(result, xr.Dataset) and result.attrs["probe"] == name
    if PROBES[name].family in ("conflict", "affinity", "experts"):
        assert np.isfinite(task_matrix(result).values).all(), f"{name}: every task is labelled on its own samples"
    for variable in result.data_vars.values():
        assert not np.isinf(variable.values).any()
