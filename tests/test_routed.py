"""Tasks labelled on different samples: missing labels (masks) and a batch per task (TaskInputs groups).

The engine, the model and the loop against the definition: a task's loss averages over its labelled
samples, its gradient is the gradient of that loss alone, a task labelled nowhere in a batch has a
zero row and a NaN loss, and the targets of unlabelled samples are never read.
"""

import numpy as np
import pytest
import torch

from tests.conftest import tiny_batch, tiny_model
from workbench.gradients import STRATEGIES, model_task_jacobian
from workbench.tasks import MultiTaskData, TaskInputs, label_mask, masked_batch
from workbench.train import train


def _masks(n: int, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = {"t0": torch.rand(n, generator=g) < 0.6, "t1": torch.rand(n, generator=g) < 0.3}
    masks["t0"][0] = masks["t1"][1] = True
    return masks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_row_of_a_masked_batch_is_the_gradient_of_that_task_on_its_labelled_samples(strategy):
    model = tiny_model()
    x, targets = tiny_batch(model, n=16)
    masks = _masks(16)
    routed, kept = masked_batch(x, targets, masks)
    jacobian = model_task_jacobian(model, routed, kept, strategy=strategy, task_grads=True)
    shared = model.shared_parameters()
    for row, task in enumerate(model.task_names):
        index = masks[task] if task in masks else torch.ones(16, dtype=torch.bool)
        loss = model.tasks[task].loss(model(x[index])[task], targets[task][index])
        expected = torch.autograd.grad(loss, [p for _, p in shared])
        assert jacobian.losses[row].item() == pytest.approx(loss.item(), rel=1e-6)
        for (name, _), gradient in zip(shared, expected):
            torch.testing.assert_close(jacobian.blocks[name][row], gradient, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_batch_per_task_of_the_same_samples_gives_the_shared_batch_jacobian(strategy):
    model = tiny_model()
    x, targets = tiny_batch(model, n=12)
    per_task = TaskInputs((x, x.clone(), x.clone()), {task: (g, None) for g, task in enumerate(model.task_names)})
    routed = model_task_jacobian(model, per_task, targets, strategy=strategy, keep_representation_grads=True)
    shared = model_task_jacobian(model, x, targets, strategy=strategy, keep_representation_grads=True)
    for name in shared.blocks:
        torch.testing.assert_close(routed.blocks[name], shared.blocks[name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(routed.losses, shared.losses)
    # Z of the three groups is concatenated: task t's cotangent sits in its own group's third
    for t in range(3):
        torch.testing.assert_close(routed.representation_grads[t, 12 * t : 12 * (t + 1)], shared.representation_grads[t], rtol=1e-5, atol=1e-7)
        assert not routed.representation_grads[t, : 12 * t].any() and not routed.representation_grads[t, 12 * (t + 1) :].any()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_task_labelled_nowhere_in_the_batch_has_a_zero_row_and_a_nan_loss(strategy):
    model = tiny_model()
    x, targets = tiny_batch(model, n=10)
    routed, kept = masked_batch(x, targets, {"t2": torch.zeros(10, dtype=torch.bool)})
    jacobian = model_task_jacobian(model, routed, kept, strategy=strategy, task_grads=True)
    assert torch.isnan(jacobian.losses[2]) and torch.isfinite(jacobian.losses[:2]).all()
    assert all(not block[2].any() and block[:2].any() for block in jacobian.blocks.values())
    assert all(not g.any() for name, g in jacobian.task_grads.items() if name.startswith("heads.t2."))


def test_a_masked_loss_averages_over_the_labelled_samples_only_and_never_reads_the_others():
    model = tiny_model()
    x, targets = tiny_batch(model, n=16)
    masks = _masks(16)
    poisoned = {name: y.masked_fill(~masks[name], torch.nan) if name in masks else y for name, y in targets.items()}
    losses = model.losses(*masked_batch(x, poisoned, masks))
    for name, index in masks.items():
        assert losses[name].item() == pytest.approx(model.tasks[name].loss(model(x[index])[name], targets[name][index]).item(), rel=1e-6)


def test_label_mask_marks_each_task_on_the_concatenated_samples():
    x = torch.randn(4, 5)
    routed = TaskInputs((x, x[:2]), {"a": (0, torch.tensor([1, 3])), "b": (1, None)})
    np.testing.assert_array_equal(label_mask(routed, ["a", "b", "c"]).numpy(), [[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1], [0] * 6])


def test_training_never_reads_the_targets_of_unlabelled_samples_and_leaves_an_unlabelled_head_alone():
    """SGD without momentum: a head moves only on steps where its task has a label; NaN in unlabelled targets changes nothing."""
    model = tiny_model()
    x, targets = tiny_batch(model, n=40)
    masks = {"t2": torch.zeros(40, dtype=torch.bool)}
    masks["t2"][0] = True  # one label: the data is valid, and most batches of 8 miss it
    sgd = lambda p: torch.optim.SGD(p, lr=0.05)  # noqa: E731
    head_before = model.heads["t2"].weight.detach().clone()
    clean = train(model, MultiTaskData(x, targets, list(model.tasks.values()), masks=masks), 12, method="mgda", batch_size=8, optimizer=sgd, progress=False)
    poisoned_targets = {**targets, "t2": targets["t2"].clone()}
    poisoned_targets["t2"][1:] = torch.nan
    poisoned = train(tiny_model(), MultiTaskData(x, poisoned_targets, list(model.tasks.values()), masks=masks), 12, method="mgda", batch_size=8, optimizer=sgd, progress=False)
    np.testing.assert_array_equal(clean.history.train_loss.values, poisoned.history.train_loss.values)
    unlabelled_steps = np.isnan(clean.history.train_loss.values[:, 2])
    assert 0 < unlabelled_steps.sum() < 12
    assert np.isnan(clean.history.weights.values[unlabelled_steps, 2]).all()
    assert np.isfinite(clean.history.weights.values[~unlabelled_steps]).all()
    step = int(np.flatnonzero(unlabelled_steps)[0])  # a step on which t2 has no label: its head must not move
    data = MultiTaskData(x, targets, list(model.tasks.values()), masks=masks)
    before = train(tiny_model(), data, step, method="mgda", batch_size=8, optimizer=sgd, progress=False).model if step else tiny_model()
    after = train(tiny_model(), data, step + 1, method="mgda", batch_size=8, optimizer=sgd, progress=False).model
    assert torch.equal(before.heads["t2"].weight, after.heads["t2"].weight)
    assert not torch.equal(before.heads["t0"].weight, after.heads["t0"].weight)
    assert not torch.equal(model.heads["t2"].weight, head_before), "t2 trained on the steps where it had its label"


def test_masks_that_do_not_match_their_samples_or_tasks_are_refused_by_name():
    model = tiny_model()
    x, targets = tiny_batch(model, n=6)
    tasks = list(model.tasks.values())
    with pytest.raises(ValueError, match="the mask of task 't1' must be a bool tensor \\(6,\\)"):
        MultiTaskData(x, targets, tasks, masks={"t1": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="the mask of task 't1' must be a bool tensor"):
        MultiTaskData(x, targets, tasks, masks={"t1": torch.ones(6)})
    with pytest.raises(ValueError, match="masks name tasks \\['nope'\\]"):
        MultiTaskData(x, targets, tasks, masks={"nope": torch.ones(6, dtype=torch.bool)})
    none = MultiTaskData(x, targets, tasks, masks={"t0": torch.zeros(6, dtype=torch.bool)})  # a part of the data may lack a task
    with pytest.raises(ValueError, match=r"tasks \['t0'\] have no labelled sample in the training data"):
        train(model, none, 2, progress=False)
    with pytest.raises(ValueError, match=r"tasks \['t0'\] have no labelled sample in the evaluation data"):
        model.evaluate_batches(none.batches(4))
    with pytest.raises(KeyError, match="the batch names tasks \\['extra'\\] the model does not have"):
        model.losses(x, {**targets, "extra": targets["t0"]})
    with pytest.raises(ValueError, match="task 't0': sample indices \\[6\\] out of range"):
        TaskInputs((x,), {"t0": (0, torch.tensor([6]))})
    with pytest.raises(ValueError, match="task 't0' is routed to input group 1"):
        TaskInputs((x,), {"t0": (1, None)})


def test_without_labels_removes_the_share_of_each_task_independently_and_reproducibly():
    model = tiny_model()
    x, targets = tiny_batch(model, n=200)
    data = MultiTaskData(x, targets, list(model.tasks.values()))
    removed = data.without_labels(0.25, seed=4)
    assert [removed.labelled(t) for t in data.task_names] == [150, 150, 150]
    again = data.without_labels(0.25, seed=4)
    assert all(torch.equal(removed.masks[t], again.masks[t]) for t in data.task_names)
    assert not torch.equal(removed.masks["t0"], removed.masks["t1"])
    twice = removed.without_labels(0.5, seed=5)
    assert all((twice.masks[t] <= removed.masks[t]).all() and twice.labelled(t) == 75 for t in data.task_names)
    train_part, test_part = removed.split(0.5, seed=1)
    assert train_part.labelled("t0") + test_part.labelled("t0") == 150


def test_evaluation_scores_each_task_on_its_labelled_samples_in_batches_as_at_once():
    model = tiny_model()
    x, targets = tiny_batch(model, n=50)
    data = MultiTaskData(x, targets, list(model.tasks.values()), masks=_masks(50))
    streamed = model.evaluate_batches(data.batches(7))
    for task in data.task_names:
        index = data.masks.get(task, torch.ones(50, dtype=torch.bool))
        expected = model.tasks[task].loss(model(x[index])[task], targets[task][index]).item()
        assert streamed[task][0] == pytest.approx(expected, rel=1e-6)


def test_labels_are_removed_apart_from_the_batches_order_and_the_same_for_a_task_in_any_set_of_tasks():
    """Seeded by the task's name on a stream of its own: the labels kept are unrelated to the epochs' order, even when
    the data's seed is the training seed, and a task keeps the same labels whichever tasks are beside it."""
    model = tiny_model()
    x, targets = tiny_batch(model, n=256)
    data = MultiTaskData(x, targets, list(model.tasks.values())).without_labels(0.5, seed=0)
    per_step = [[int(data.batch(step, 64, seed=0)[1][t].shape[0]) for t in data.task_names] for step in range(8)]
    assert all(16 <= count <= 48 for counts in per_step for count in counts), per_step
    alone = MultiTaskData(x, targets, list(model.tasks.values())).subset(["t1"]).without_labels(0.5, seed=0)
    assert torch.equal(alone.masks["t1"], data.masks["t1"])


def test_a_part_of_masked_data_without_a_task_is_kept_and_probed_as_nan():
    model = tiny_model()
    x, targets = tiny_batch(model, n=10)
    masks = {"t1": torch.arange(10) >= 7}  # t1 labelled on the last three samples only
    data = MultiTaskData(x, targets, list(model.tasks.values()), masks=masks)
    from workbench.probes import make_probe

    conflict = make_probe("gradient_conflict")(model, data.probe_batch(4))
    assert np.isnan(conflict.grad_norm.sel(task="t1")) and np.isfinite(conflict.grad_norm.sel(task="t0"))


def test_training_ignores_the_tasks_of_the_data_that_the_model_lacks_and_records_its_probes():
    from workbench.probes import ProbeRecorder

    model = tiny_model(n_tasks=2)
    x, targets = tiny_batch(tiny_model(), n=24)
    data = MultiTaskData(x, targets, list(tiny_model().tasks.values()))  # three tasks, the model has two
    run = train(model, data, 3, batch_size=8, recorders=[ProbeRecorder("gradient_conflict", every=1)], progress=False)
    assert run.probes["gradient_conflict"].sizes["task"] == 2


def test_a_strategy_is_reported_as_used_when_one_group_serves_a_single_task():
    model = tiny_model()
    x, targets = tiny_batch(model, n=8)
    routed = TaskInputs((x, x[:4]), {"t0": (0, None), "t1": (0, None), "t2": (1, None)})
    kept = {**targets, "t2": targets["t2"][:4]}
    assert model_task_jacobian(model, routed, kept, strategy="batched").strategy == "batched"


def test_saliency_on_a_masked_batch_equals_the_plain_batch_of_its_fully_labelled_samples():
    """With the tasks on one scale, the shares of the samples labelled for every task are those of those samples alone."""
    from workbench.probes.saliency import saliency_measures, task_saliency

    model = tiny_model()
    x, targets = tiny_batch(model, n=16)
    masks = _masks(16)
    every = masks["t0"] & masks["t1"]
    masked = saliency_measures(task_saliency(model, masked_batch(x, targets, masks)))
    alone = saliency_measures(task_saliency(model, (x[every], {t: y[every] for t, y in targets.items()})))
    np.testing.assert_allclose(masked.share.values[:, every.numpy()], alone.share.values, rtol=1e-5)
    assert np.isnan(masked.share.values[:, ~every.numpy()]).all()


def test_rep_mtl_regularises_on_the_samples_labelled_for_every_task_and_is_its_base_on_a_batch_per_task():
    from workbench.train.repmtl import saliency_regulariser

    model = tiny_model()
    x, targets = tiny_batch(model, n=16)
    masks = _masks(16)
    every = masks["t0"] & masks["t1"]
    _, masked = saliency_regulariser(model, *masked_batch(x, targets, masks), 1.0, 1.0, 0.1)
    _, alone = saliency_regulariser(model, x[every], {t: y[every] for t, y in targets.items()}, 1.0, 1.0, 0.1)
    assert masked.item() == pytest.approx(alone.item(), rel=1e-5)
    per_task = TaskInputs((x[:5], x[5:10], x[10:]), {t: (g, None) for g, t in enumerate(model.task_names)})
    _, nothing = saliency_regulariser(model, per_task, {t: targets[t][5 * g : 5 * g + (5 if g < 2 else 6)] for g, t in enumerate(model.task_names)}, 1.0, 1.0, 0.1)
    assert nothing.item() == 0.0
