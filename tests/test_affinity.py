"""TAG's lookahead affinity against the reference algorithm, the cosine affinity, and their bad input."""

import copy
from functools import partial

import numpy as np
import pytest
import torch

from tests.conftest import tiny_batch, tiny_model
from workbench.probes import ProbeRecorder, cosine_affinity, tag_affinity, tag_affinity_loop, task_matrix
from workbench.train import train
from workbench.tasks import MultiTaskData

OPTIMIZERS = {
    "sgd": partial(torch.optim.SGD, lr=0.05),
    "sgd-momentum": partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    "sgd-nesterov-decay": partial(torch.optim.SGD, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    "sgd-dampening-maximize": partial(torch.optim.SGD, lr=0.05, momentum=0.5, dampening=0.3, maximize=True),
    "adam": partial(torch.optim.Adam, lr=0.01),
    "adam-decay-amsgrad": partial(torch.optim.Adam, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adamw": partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
}


def _warmed_up(make_optimizer, steps: int = 3):
    """A tiny model and its optimizer after a few steps, so that momentum and moments are not empty."""
    model = tiny_model(n_tasks=4)
    optimizer = make_optimizer(model.parameters())
    for step in range(steps):
        x, targets = tiny_batch(model, seed=10 + step)
        optimizer.zero_grad()
        sum(model.losses(x, targets).values()).backward()
        optimizer.step()
    return model, optimizer


def _data(n: int = 64) -> MultiTaskData:
    model = tiny_model()
    return MultiTaskData(*tiny_batch(model, n=n), [model.tasks[t] for t in model.task_names])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_batched_lookahead_equals_the_reference_loop(name):
    model, optimizer = _warmed_up(OPTIMIZERS[name])
    batch = tiny_batch(model, seed=99)
    batched = tag_affinity(model, batch, optimizer)
    looped = tag_affinity_loop(model, batch, optimizer)
    np.testing.assert_allclose(batched.loss_before, looped.loss_before, rtol=1e-6)
    np.testing.assert_allclose(batched.loss_after, looped.loss_after, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched.affinity, looped.affinity, atol=1e-5)
    assert np.abs(looped.affinity.values).max() > 1e-3  # the steps moved the losses


@pytest.mark.parametrize("probe", [tag_affinity, tag_affinity_loop])
def test_the_probe_changes_neither_model_nor_optimizer(probe):
    model, optimizer = _warmed_up(OPTIMIZERS["adam"])
    parameters = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    probe(model, tiny_batch(model), optimizer)
    probe(model, tiny_batch(model), optimizer)
    for key, value in model.state_dict().items():
        assert torch.equal(value, parameters[key]), key
    for index, saved in state["state"].items():
        for key, value in optimizer.state_dict()["state"][index].items():
            assert torch.equal(value, saved[key]), (index, key)


def test_training_with_the_probe_gives_the_same_numbers_as_without():
    data = _data()
    runs = []
    for recorders in ([], [ProbeRecorder(tag_affinity, every=2)]):
        torch.manual_seed(0)
        runs.append(train(tiny_model(seed=3), data, 6, optimizer=partial(torch.optim.Adam, lr=0.01), batch_size=16, recorders=recorders, progress=False))
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)
    assert runs[1].probes["tag_affinity"].step.values.tolist() == [0, 2, 4]


def test_a_lookahead_toward_a_tasks_own_gradient_lowers_its_loss():
    model, optimizer = _warmed_up(partial(torch.optim.SGD, lr=1e-3))
    affinity = tag_affinity(model, tiny_batch(model), optimizer).affinity
    assert (np.diag(affinity) > 0).all()


def test_divide_by_lr_scales_by_the_learning_rate():
    model, optimizer = _warmed_up(OPTIMIZERS["sgd-momentum"])
    batch = tiny_batch(model)
    plain = tag_affinity(model, batch, optimizer).affinity
    divided = tag_affinity(model, batch, optimizer, divide_by_lr=True).affinity
    np.testing.assert_allclose(divided, plain / 0.05, rtol=1e-6)


def test_divide_by_lr_refuses_several_learning_rates():
    model = tiny_model()
    encoder = list(model.encoder.parameters())
    optimizer = torch.optim.SGD([{"params": encoder[:2], "lr": 0.1}, {"params": encoder[2:] + list(model.heads.parameters()), "lr": 0.01}])
    with pytest.raises(ValueError, match="one learning rate"):
        tag_affinity(model, tiny_batch(model), optimizer, divide_by_lr=True)


def test_an_optimizer_the_lookahead_cannot_reproduce_is_refused_and_the_loop_takes_it():
    model = tiny_model()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="cannot reproduce RMSprop.*tag_affinity_loop"):
        tag_affinity(model, tiny_batch(model), optimizer)
    assert tag_affinity_loop(model, tiny_batch(model), optimizer).affinity.shape == (3, 3)


def test_an_optimizer_without_the_shared_parameters_is_refused():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.heads.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        tag_affinity(model, tiny_batch(model), optimizer)


def test_one_task_is_refused():
    model = tiny_model(n_tasks=1)
    with pytest.raises(ValueError, match="one task"):
        tag_affinity(model, tiny_batch(model), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="one task"):
        cosine_affinity(model, tiny_batch(model))


def test_a_zero_loss_is_named_with_its_step_in_training():
    model = tiny_model()
    x, targets = tiny_batch(model, n=32)
    with torch.no_grad():
        targets["t1"] = model(x)["t1"].clone()  # t1's loss is exactly zero at the start
    recorder = ProbeRecorder(tag_affinity, every=1)
    with pytest.raises(ValueError, match=r"tag_affinity' at step 0: tasks \['t1'\] have zero loss"):
        train(model, MultiTaskData(x, targets, [model.tasks[t] for t in model.task_names]), 2, optimizer=partial(torch.optim.SGD, lr=0.0), batch_size=32, recorders=[recorder], progress=False)


def test_a_non_finite_loss_after_the_step_is_named():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite loss of tasks"):
        tag_affinity(model, tiny_batch(model), optimizer)


def test_cosine_affinity_is_the_gradient_cosine():
    model = tiny_model()
    x, targets = tiny_batch(model)
    shared = [p for _, p in model.shared_parameters()]
    losses = model.losses(x, targets)
    grads = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]) for t in model.task_names])
    unit = grads / grads.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(cosine_affinity(model, (x, targets)).affinity, (unit @ unit.T).numpy(), atol=1e-5)


def test_the_task_matrix_of_a_history_averages_the_chosen_steps_and_refuses_an_empty_range():
    data = _data()
    recorder = ProbeRecorder(cosine_affinity, every=1)
    train(tiny_model(), data, 4, batch_size=16, recorders=[recorder], progress=False)
    history = recorder.history
    np.testing.assert_allclose(task_matrix(history, start=2), history.affinity.sel(step=[2, 3]).mean("step"))
    with pytest.raises(ValueError, match="no recorded step"):
        task_matrix(history, start=10)
