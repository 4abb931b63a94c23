from functools import partial

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.data import make_synthetic
from workbench.probes import ProbeRecorder, gradient_conflict
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel
from workbench.train import delta_m, single_task_baselines, train


def _problem():
    return make_synthetic(n_tasks=3, n_samples=200, n_features=6, groups=[[0, 1]], classification=[2], seed=3)


def _factory(tasks):
    return MultiTaskModel(mlp_encoder(6, (16,)), tasks, representation_dim=16)


def _run(seed=0, **kwargs):
    problem = _problem()
    torch.manual_seed(seed)
    return train(_factory(problem.data.tasks), problem.data, 30, batch_size=16, seed=seed, progress=False, **kwargs)


def test_history_layout_and_learning():
    result = _run(recorders=[ProbeRecorder(gradient_conflict, every=10)], eval_every=10)
    h = result.history
    assert h.train_loss.dims == ("step", "task") and h.sizes["step"] == 30
    assert h.eval_step.values.tolist() == [0, 10, 20, 30]
    assert h.metric_name.values.tolist() == ["mse", "mse", "accuracy"]
    assert (h.loss.isel(eval_step=-1) < h.loss.isel(eval_step=0)).all()
    probe = result.probes["gradient_conflict"]
    assert probe.step.values.tolist() == [0, 10, 20]
    for ds in (h, probe):
        assert ds.attrs["model"] == {"encoder": "Sequential", "shared_parameters": 112, "parameters": 163, "tasks": ["t0", "t1", "t2"]}
        assert ds.attrs["data"]["generator"] == "synthetic" and ds.attrs["data"]["seed"] == 3
    assert probe.attrs["probe"] == "gradient_conflict"


def test_deterministic_under_seed():
    a, b, c = _run(0), _run(0), _run(1)
    xr.testing.assert_identical(a.history.drop_vars("step_seconds"), b.history.drop_vars("step_seconds"))
    assert (a.history.step_seconds > 0).all()
    assert not np.array_equal(a.history.train_loss.values, c.history.train_loss.values)


def test_any_torch_optimizer():
    result = _run(optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    assert result.history.attrs["optimizer"] == "SGD"


def test_nan_loss_names_the_task():
    problem = _problem()
    problem.data.targets["t1"][5] = float("nan")
    with pytest.raises(FloatingPointError, match="tasks {'t1': nan}"):
        train(_factory(problem.data.tasks), problem.data, 5, batch_size=200, progress=False)


def test_single_task_baselines():
    problem = _problem()
    baselines = single_task_baselines(_factory, problem.data, 20, batch_size=16, progress=False)
    assert baselines.task.values.tolist() == ["t0", "t1", "t2"]
    assert set(baselines.data_vars) == {"loss", "metric"}
    assert baselines.higher_is_better.values.tolist() == [False, False, True]


def test_delta_m_pinned():
    tasks = {"task": ["mse", "acc"]}
    metric = xr.DataArray([0.9, 0.8], dims="task", coords=tasks)
    single = xr.DataArray([1.0, 0.5], dims="task", coords=tasks)
    higher = xr.DataArray([False, True], dims="task", coords=tasks)
    # mse improves by 10% (-10), accuracy improves by 60% (-60): mean -35
    assert float(delta_m(metric, single, higher)) == pytest.approx(-35.0)
    with pytest.raises(ValueError, match="zero"):
        delta_m(metric, single * 0, higher)


def test_batches_are_full_cover_an_epoch_and_depend_on_the_step_alone():
    data = _problem().data.rows(torch.arange(10))
    first_epoch = [data.batch(step, 4, seed=0)[0] for step in range(2)]
    assert [b.shape[0] for b in first_epoch] == [4, 4] and data.steps_per_epoch(4) == 2
    assert len({tuple(row.tolist()) for b in first_epoch for row in b}) == 8
    assert torch.equal(data.batch(5, 4, seed=0)[0], data.batch(5, 4, seed=0)[0])
    assert not torch.equal(data.batch(2, 4, seed=0)[0], data.batch(0, 4, seed=0)[0])  # a new epoch, a new order
    assert data.batch(0, 32, seed=0)[0].shape[0] == 10


def test_named_inputs_train_and_probe():
    """Token ids with a mask go through the loop, the evaluation and a recorder's fixed batch."""
    transformers = pytest.importorskip("transformers")
    from workbench.models import TransformerEncoder
    from workbench.tasks import MultiTaskData, regression_task

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, max_position_embeddings=8)
    tasks = [regression_task("a"), regression_task("b")]
    model = MultiTaskModel(TransformerEncoder(transformers.BertModel(config), trainable_layers=1), tasks, representation_dim=8)
    ids = torch.randint(1, 30, (40, 5))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    data = MultiTaskData(x, {"a": ids[:, 0].float() / 30, "b": -ids[:, 1].float() / 30}, tasks)
    fixed = data.head(16)
    recorder = ProbeRecorder(gradient_conflict, every=5, by="block", batch=(fixed.x, fixed.targets))
    result = train(model, data, 10, batch_size=8, eval_batch_size=16, recorders=[recorder], device="cpu", progress=False)
    assert result.history.attrs["device"] == "cpu"
    assert result.probes["gradient_conflict"].layer.values.tolist() == ["transformer.encoder.layer.1"]
    assert np.isfinite(result.history.loss.values).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_and_probes_on_cuda():
    problem = _problem()
    held_out = problem.data.head(64)
    recorder = ProbeRecorder(gradient_conflict, every=10, batch=(held_out.x, held_out.targets))
    torch.manual_seed(0)
    result = train(_factory(problem.data.tasks), problem.data, 30, batch_size=16, recorders=[recorder], device="cuda", progress=False)
    assert result.history.attrs["device"].startswith("cuda") and result.model.device.type == "cuda"
    cpu = _run(recorders=[ProbeRecorder(gradient_conflict, every=10, batch=(held_out.x, held_out.targets))])
    np.testing.assert_allclose(result.history.loss.values, cpu.history.loss.values, rtol=1e-3)
