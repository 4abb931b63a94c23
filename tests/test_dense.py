"""Dense targets, a map per sample (the canonical multi-task benchmarks' segmentation and depth), through the
contract, the gradient engine, every registered probe and the training loop; and losses in the model's dtype."""

import numpy as np
import pytest
import torch
from torch import nn

from workbench.gradients import model_task_jacobian
from workbench.probes import PROBES, make_probe, task_matrix
from workbench.tasks import MultiTaskData, MultiTaskModel, classification_task, regression_task
from workbench.train import train

N, SIZE, CLASSES = 48, 8, 3


def dense_problem(seed: int = 0) -> tuple[MultiTaskModel, MultiTaskData]:
    """Images ``(N, 1, 8, 8)``; ``segment``, a class per pixel from its brightness, and ``depth``, a smoothed copy of the image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, 1, SIZE, SIZE, generator=g)
    segment = torch.bucketize(images[:, 0], torch.tensor([-0.5, 0.5]))  # (N, 8, 8) in {0, 1, 2}
    depth = nn.functional.avg_pool2d(images, 3, stride=1, padding=1)[:, 0]  # (N, 8, 8)
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
    tasks = [classification_task("segment", CLASSES), regression_task("depth")]
    heads = {"segment": nn.Conv2d(6, CLASSES, 1), "depth": nn.Conv2d(6, 1, 1)}
    return MultiTaskModel(encoder, tasks, heads=heads), MultiTaskData(images, {"segment": segment, "depth": depth}, tasks)


def test_dense_losses_and_metrics_average_over_the_pixels():
    model, data = dense_problem()
    outputs = model(data.x)
    assert outputs["segment"].shape == (N, CLASSES, SIZE, SIZE) and outputs["depth"].shape == (N, 1, SIZE, SIZE)
    losses = model.losses(data.x, data.targets)
    torch.testing.assert_close(losses["segment"], nn.functional.cross_entropy(outputs["segment"], data.targets["segment"]))
    torch.testing.assert_close(losses["depth"], ((outputs["depth"][:, 0] - data.targets["depth"]) ** 2).mean())
    scores = model.evaluate(data.x, data.targets, batch_size=7)  # in chunks of 7 samples, equal to one pass
    pixel_accuracy = (outputs["segment"].argmax(1) == data.targets["segment"]).float().mean()
    assert scores["segment"][1] == pytest.approx(float(pixel_accuracy)) and scores["depth"][0] == pytest.approx(losses["depth"].item(), rel=1e-5)


def test_the_engine_gives_each_tasks_gradient_of_a_dense_loss():
    model, data = dense_problem()
    x, targets = data.x[:10], {name: y[:10] for name, y in data.targets.items()}
    jacobian = model_task_jacobian(model, x, targets, keep_representation_grads=True)
    losses = model.losses(x, targets)
    shared = [p for _, p in model.shared_parameters()]
    for index, task in enumerate(model.task_names):
        expected = torch.cat([g.flatten() for g in torch.autograd.grad(losses[task], shared, retain_graph=True)])
        torch.testing.assert_close(jacobian.matrix()[index], expected)
    assert jacobian.representation_grads.shape == (2, 10, 6, SIZE, SIZE)


def test_every_registered_probe_runs_on_dense_tasks():
    model, data = dense_problem()
    batch = (data.x[:12], {name: y[:12] for name, y in data.targets.items()})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sum(model.losses(*batch).values()).backward()
    optimizer.step()
    for name in PROBES:
        probe = make_probe(name)
        if not probe.applies_to(model):
            continue
        result = probe(model, batch, **({"optimizer": optimizer} if probe.takes("optimizer") else {}))
        if PROBES[name].traits["pairwise"]:
            assert task_matrix(result).shape == (2, 2)
    attribution = make_probe("input_attribution")(model, batch).attribution
    assert attribution.dims == ("task", "sample", "input_channel", "row", "column")


def test_training_on_dense_targets_lowers_both_losses():
    model, data = dense_problem()
    before = {name: float(loss) for name, loss in model.losses(data.x, data.targets).items()}
    for method in ("ew", "upgrad"):
        run = train(model, data, 30, method=method, batch_size=16, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), progress=False)
        assert np.isfinite(run.history.train_loss.values).all()
    after = {name: float(loss) for name, loss in model.losses(data.x, data.targets).items()}
    assert all(after[name] < before[name] for name in before), (before, after)


def test_losses_take_the_dtype_of_the_model():
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Linear(3, 4), [regression_task("r"), classification_task("binary"), classification_task("three", 3)], representation_dim=4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    targets = {"r": torch.randn(5), "binary": torch.randint(0, 2, (5,)), "three": torch.randint(0, 3, (5,))}  # float32 and integer targets
    losses = model.losses(x, targets)
    assert {name: loss.dtype for name, loss in losses.items()} == dict.fromkeys(losses, torch.float64)
