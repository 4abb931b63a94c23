import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.conftest import tiny_batch, tiny_model
from workbench.gradients import STRATEGIES, model_task_jacobian, task_jacobian


def naive_jacobian(model, batch):
    """One ``torch.autograd.grad`` per task, flattened and stacked: the reference."""
    rows = []
    for name in model.task_names:
        loss = model.losses(*batch)[name]
        grads = torch.autograd.grad(loss, [p for _, p in model.shared_parameters()], allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, (_, p) in zip(grads, model.shared_parameters())]))
    return torch.stack(rows)


@settings(deadline=None)
@given(n_tasks=st.integers(1, 6), width=st.integers(1, 9), seed=st.integers(0, 10_000), strategy=st.sampled_from(["auto", *STRATEGIES]))
def test_jacobian_matches_naive_loop(n_tasks, width, seed, strategy):
    model = tiny_model(n_tasks, hidden=(width, 4), seed=seed)
    batch = tiny_batch(model, seed=seed)
    jacobian = model_task_jacobian(model, *batch, strategy=strategy)
    expected = naive_jacobian(model, batch)
    torch.testing.assert_close(jacobian.matrix(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(jacobian.gramian(), expected @ expected.T, atol=1e-5, rtol=1e-5)


def test_block_shapes_and_layer_gramians_add_up(model, batch):
    jacobian = model_task_jacobian(model, *batch)
    for name, parameter in model.shared_parameters():
        assert jacobian.blocks[name].shape == (3, *parameter.shape)
    per_tensor = jacobian.gramians("tensor")
    per_module = jacobian.gramians("module")
    assert list(per_module) == ["0", "2"]
    assert list(per_tensor) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    torch.testing.assert_close(per_module["0"], per_tensor["0.weight"] + per_tensor["0.bias"])
    torch.testing.assert_close(sum(per_module.values()), jacobian.gramian())


def test_unused_parameters_and_zero_gradient_give_zero_rows():
    a = nn.Parameter(torch.tensor([1.0, 2.0]))
    b = nn.Parameter(torch.tensor([3.0]))
    losses = {"uses_a": (a**2).sum(), "uses_b": 2 * b.sum(), "constant": a.sum() * 0.0}
    jacobian = task_jacobian(losses, [("a", a), ("b", b)])
    torch.testing.assert_close(jacobian.matrix(), torch.tensor([[2.0, 4.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))


def test_losses_without_graph_give_zeros():
    a = nn.Parameter(torch.ones(2))
    jacobian = task_jacobian({"x": torch.tensor(1.0), "y": torch.tensor(2.0)}, [("a", a)])
    assert torch.equal(jacobian.matrix(), torch.zeros(2, 2))


def test_unbatchable_operator_falls_back_to_a_loop(no_batched_grad):
    a = nn.Parameter(torch.tensor([1.0, -2.0]))
    with pytest.warns(RuntimeWarning, match="task by task"):
        jacobian = task_jacobian({"p": (a**2).sum(), "q": (3 * a).sum()}, [("a", a)])
    torch.testing.assert_close(jacobian.matrix(), torch.tensor([[2.0, -4.0], [3.0, 3.0]]))


@pytest.mark.parametrize(
    "losses, message",
    [
        ({}, "no losses"),
        ({"vector": torch.ones(2, requires_grad=True)}, "task 'vector' must be a scalar"),
        ({"bad": torch.tensor(float("nan"), requires_grad=True)}, "non-finite loss for tasks {'bad': nan}"),
    ],
)
def test_bad_losses_are_refused_by_name(losses, message):
    with pytest.raises((ValueError, FloatingPointError), match=message):
        task_jacobian(losses, [("a", nn.Parameter(torch.ones(1)))])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_representation_and_task_grads_are_each_tasks_gradients(model, batch, strategy):
    assert model_task_jacobian(model, *batch, strategy=strategy).representation_grads is None
    jacobian = model_task_jacobian(model, *batch, keep_representation_grads=True, task_grads=True, strategy=strategy)
    assert jacobian.strategy == strategy
    z = model.represent(batch[0]).detach().requires_grad_()
    for i, name in enumerate(model.task_names):
        loss = model.tasks[name].loss(model.heads[name](z), batch[1][name])
        (expected,) = torch.autograd.grad(loss, z)
        torch.testing.assert_close(jacobian.representation_grads[i], expected)
        head = dict(model.task_parameters()[name])
        for parameter, want in zip(head, torch.autograd.grad(model.losses(*batch)[name], list(head.values()))):
            torch.testing.assert_close(jacobian.task_grads[parameter], want)
    assert jacobian.representation_grads.shape == (3, 11, 6)


def test_a_cnn_encoder_fits_the_contract():
    """A representation of shape (B, C, H, W) and heads that pool it: the engine still matches the loop."""
    from workbench.tasks import MultiTaskModel, classification_task, regression_task

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    tasks = [regression_task("depth"), classification_task("digit", n_classes=5)]
    heads = {"depth": nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 1)), "digit": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))}
    model = MultiTaskModel(encoder, tasks, heads=heads)
    x = torch.randn(7, 1, 6, 6)
    targets = {"depth": torch.randn(7), "digit": torch.randint(0, 5, (7,))}
    jacobian = model_task_jacobian(model, x, targets, keep_representation_grads=True)
    torch.testing.assert_close(jacobian.matrix(), naive_jacobian(model, (x, targets)), atol=1e-5, rtol=1e-5)
    assert jacobian.representation_grads.shape == (2, 7, 3, 6, 6)


def test_a_head_output_that_does_not_fit_its_targets_names_the_task(model, batch):
    x, targets = batch
    targets["t2"] = torch.randn(11, 3)
    with pytest.raises(ValueError, match=r"task 't2': its loss failed on output \(11, 1\) and targets \(11, 3\)"):
        model_task_jacobian(model, x, targets)
