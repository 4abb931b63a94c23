"""Task saliency against naive references, its measures' laws, input attribution against planted
supports, and the Rep-MTL regulariser against a loop over samples and positions."""

import math
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.conftest import tiny_batch, tiny_model
from workbench.models import conv_encoder, representation_shape
from workbench.probes import ProbeRecorder
from workbench.probes.saliency import (
    channel_affinity_alignment,
    cross_task_alignment_loss,
    input_attribution,
    saliency_conflict,
    saliency_measures,
    share_entropy,
    task_saliency,
)
from workbench.probes.validation import attribution_recovery
from workbench.studies.problems import load_problem
from workbench.tasks import MultiTaskData, MultiTaskModel, Task, regression_task
from workbench.train import make_method, train
from workbench.studies.saliency import attribution_validity_study, representation_vs_parameter, saliency_during_training

CNN_DIMS = ("channel", "height", "width")


def cnn_model(n_tasks: int = 3, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    net = conv_encoder(1, (4, 6, 5))
    return MultiTaskModel(net, [regression_task(f"t{i}") for i in range(n_tasks)], representation_dim=representation_shape(net, torch.zeros(1, 1, 12, 16)))


def cnn_batch(model, n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 12, 16, generator=g), {t: torch.randn(n, generator=g) for t in model.task_names}


def _naive_saliency(model, x, targets) -> torch.Tensor:
    z = model.represent(x)
    losses = model.losses_from_outputs(model.heads_forward(z), targets)
    return torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in model.task_names])


@pytest.mark.parametrize("make, batch, dims", [(tiny_model, tiny_batch, ("channel",)), (cnn_model, cnn_batch, CNN_DIMS)])
def test_saliency_is_the_loss_gradient_at_the_representation(make, batch, dims):
    model = make()
    x, targets = batch(model)
    ds = task_saliency(model, (x, targets))
    assert ds.saliency.dims == ("task", "sample", *dims)
    np.testing.assert_allclose(ds.saliency.values, _naive_saliency(model, x, targets).numpy(), rtol=1e-5, atol=1e-8)


def _random_saliency(draw_seed: int, n_tasks: int, shape=(2, 5, 3, 2)) -> torch.Tensor:
    return torch.randn(n_tasks, *shape, generator=torch.Generator().manual_seed(draw_seed), dtype=torch.float64)


@settings(deadline=None)
@given(seed=st.integers(0, 2**16), n_tasks=st.integers(2, 5))
def test_shares_sum_to_one_and_entropy_is_between_zero_and_log_t(seed, n_tasks):
    share, entropy = share_entropy(_random_saliency(seed, n_tasks), CNN_DIMS)
    torch.testing.assert_close(share.sum(0), torch.ones_like(share[0]))
    assert (entropy >= -1e-12).all() and (entropy <= math.log(n_tasks) + 1e-12).all()


def test_entropy_is_zero_where_one_task_pulls_alone_and_maximal_where_all_pull_equally():
    alone = torch.zeros(3, 2, 4, 2, 3, dtype=torch.float64)
    alone[1] = 1.0
    assert share_entropy(alone, CNN_DIMS)[1].abs().max() < 1e-9
    equal = torch.ones(3, 2, 4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(share_entropy(equal, CNN_DIMS)[1], torch.full((2, 6), math.log(3), dtype=torch.float64))


def test_channel_alignment_equals_the_cosine_of_the_explicit_affinity_maps():
    s = _random_saliency(3, 3)  # (T, B, C, H, W)
    got = channel_affinity_alignment(s, CNN_DIMS)
    flat = s.reshape(3, 2, 5, 6)
    for t in range(3):
        for u in range(3):
            for b in range(2):
                m_t, m_u = flat[t, b] @ flat[t, b].T, flat[u, b] @ flat[u, b].T
                assert float(got[t, u, b]) == pytest.approx(float((m_t * m_u).sum() / m_t.norm() / m_u.norm()))


def test_cross_task_alignment_equals_infonce_over_explicit_maps():
    s = _random_saliency(4, 3)
    temperature = 0.2
    flat = s.reshape(3, 2, 5, 6)
    anchors = [flat[:, b].mean(-1).T for b in range(2)]  # (C, T)
    anchors = [a @ a.T / (a @ a.T).norm() for a in anchors]
    total = 0.0
    for t in range(3):
        for b in range(2):
            m = flat[t, b] @ flat[t, b].T
            logits = torch.stack([(m / m.norm() * anchor).sum() / temperature for anchor in anchors])
            total += -torch.log_softmax(logits, 0)[b]
    assert float(cross_task_alignment_loss(s, CNN_DIMS, temperature)) == pytest.approx(float(total / 6))


def test_measures_of_a_tasks_copy_are_identical():
    """Two heads that are exact copies pull identically: cosine and alignment 1, shares equal."""
    model = tiny_model(n_tasks=2)
    model.heads["t1"].load_state_dict(model.heads["t0"].state_dict())
    x, targets = tiny_batch(model)
    targets["t1"] = targets["t0"]
    measures = saliency_measures(task_saliency(model, (x, targets)))
    np.testing.assert_allclose(measures.cosine.sel(task="t0", other_task="t1"), 1.0, atol=1e-6)
    np.testing.assert_allclose(measures.channel_alignment.sel(task="t0", other_task="t1"), 1.0, atol=1e-6)
    np.testing.assert_allclose(measures.share, 0.5, atol=1e-6)


def test_saliency_conflict_records_during_training():
    model = cnn_model()
    x, targets = cnn_batch(model, n=32)
    recorder = ProbeRecorder(saliency_conflict, every=2)
    train(model, MultiTaskData(x, targets, list(model.tasks.values())), 4, batch_size=8, recorders=[recorder], progress=False)
    history = recorder.history
    assert history.step.values.tolist() == [0, 2]
    assert ((history.entropy >= 0) & (history.entropy <= 1)).all()
    assert ((history.conflict_frequency >= 0) & (history.conflict_frequency <= 1)).all()


def _constant_loss(output, target):
    return output.sum() * 0.0 + 1.0


def test_a_task_whose_loss_does_not_reach_the_representation_is_named():
    torch.manual_seed(0)
    tasks = [regression_task("reads"), Task("ignores", "regression", _constant_loss, _constant_loss, "loss", higher_is_better=False)]
    model = MultiTaskModel(nn.Sequential(nn.Linear(5, 4), nn.Tanh()), tasks, representation_dim=4)
    x, targets = tiny_batch(model)
    with pytest.raises(ValueError, match="'ignores' has zero saliency everywhere"):
        task_saliency(model, (x, targets))


def test_a_nan_saliency_is_named():
    model = tiny_model()
    x, targets = tiny_batch(model)
    targets["t2"][0] = float("nan")
    with pytest.raises(FloatingPointError, match="'t2'"):
        task_saliency(model, (x, targets))


def test_input_attribution_is_gradient_times_input_of_each_samples_loss():
    model = tiny_model()
    x, targets = tiny_batch(model, n=4)
    got = input_attribution(model, (x, targets)).attribution
    for t, name in enumerate(model.task_names):
        for b in range(4):
            leaf = x[b : b + 1].clone().requires_grad_()
            loss = model.tasks[name].loss(model(leaf)[name], targets[name][b : b + 1])
            expected = torch.autograd.grad(loss, leaf)[0][0] * x[b]
            np.testing.assert_allclose(got.values[t, b], expected.numpy(), rtol=1e-4, atol=1e-7)


def test_input_attribution_on_digits_is_per_pixel():
    model = cnn_model()
    attribution = input_attribution(model, cnn_batch(model)).attribution
    assert attribution.dims == ("task", "sample", "input_channel", "row", "column") and attribution.shape[-2:] == (12, 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_input_attribution_recovers_the_features_each_task_reads(seed):
    """Sparse synthetic tasks (4 of 16 features each, a group sharing its features): after training,
    each task's mean |gradient × input| ranks the features it reads first."""
    problem = load_problem("synthetic", seed=seed, n_tasks=4, groups=[[0, 1]], n_features=16, active_features=4, n_samples=1000, hidden=(32, 32))
    torch.manual_seed(seed)
    run = train(problem.make_model(problem.splits.tasks), problem.splits.train, 200, optimizer=partial(torch.optim.Adam, lr=3e-3), seed=seed, progress=False)
    held_out = problem.splits.validation
    weights = np.abs(problem.truth["weights"].values)
    recovery = attribution_recovery(input_attribution(run.model, (held_out.x, held_out.targets)).attribution, problem.truth["weights"])
    for task, importance in enumerate(recovery.importance.values):
        top = set(np.argsort(-importance)[:4].tolist())
        strong = set(np.flatnonzero(weights[task] >= 0.25 * weights[task].max()).tolist())
        assert strong <= top, f"t{task}: features {sorted(strong - top)} read strongly but not among the most attributed"
    assert (recovery.support_recall >= 0.75).all() and (recovery.spearman > 0.55).all()


def test_rep_mtl_gradient_is_the_mean_loss_plus_the_regulariser():
    model = cnn_model()
    x, targets = cnn_batch(model, n=5)
    method = make_method("rep_mtl", 3, lambda_tsr=0.7, lambda_csa=1.3, temperature=0.2)
    method.backward(model, x, targets)
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    z = model.represent(x)
    losses = model.losses_from_outputs(model.heads_forward(z), targets)
    saliency = torch.stack([torch.autograd.grad(losses[t], z, create_graph=True)[0] for t in model.task_names])
    magnitude = saliency.mean(2).abs().flatten(2)  # channel mean, positions flattened: (T, B, P)
    share = magnitude / magnitude.sum(0)
    entropy = -(share * share.log()).sum(0).mean()
    total = torch.stack(list(losses.values())).mean() + 0.7 * entropy + 1.3 * cross_task_alignment_loss(saliency, CNN_DIMS, 0.2)
    total.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_rep_mtl_on_an_aggregator_adds_the_regulariser_to_its_update():
    model = cnn_model()
    x, targets = cnn_batch(model)
    base = make_method("upgrad", 3)
    base.backward(model, x, targets)
    alone = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    make_method("rep_mtl", 3, base="upgrad").backward(model, x, targets)
    assert any(not torch.allclose(a, p.grad) for a, p in zip(alone, model.parameters()))
    model.zero_grad(set_to_none=True)
    make_method("rep_mtl", 3, base="upgrad", lambda_tsr=0.0, lambda_csa=0.0).backward(model, x, targets)
    for a, p in zip(alone, model.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("options, message", [({"base": "rep_mtl"}, "another method"), ({"temperature": 0.0}, "temperature positive"), ({"tau": 1}, "has no options")])
def test_rep_mtl_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        make_method("rep_mtl", 2, **options)


@pytest.mark.parametrize("cached", [True, False])
def test_word_piece_attribution_on_minilm(cached):
    """Cached inputs are attributed at the hidden states entering the trainable block, token ids at the
    word-piece embeddings; padding gets nothing either way."""
    problem = load_problem("lexicon", seed=0, tasks=["vader_mean", "zipf"], trainable_layers=1, max_words=40, cache_frozen=cached)
    model = problem.make_model(problem.splits.tasks).eval()
    held_out = problem.splits.validation
    attribution = input_attribution(model, (held_out.x, held_out.targets)).attribution
    mask = held_out.x["attention_mask"].numpy().astype(bool)
    assert attribution.dims == ("task", "sample", "token") and attribution.shape[1:] == mask.shape
    assert (attribution.values[:, ~mask] == 0).all() and (attribution.values[:, mask] != 0).mean() > 0.9
    saliency = task_saliency(model, (held_out.x, held_out.targets))
    assert saliency.saliency.dims == ("task", "sample", "channel") and saliency.sizes["channel"] == 384


def test_saliency_and_parameter_conflict_are_recorded_on_the_same_steps_and_paired():
    problem = load_problem("synthetic", seed=0, n_tasks=3, n_samples=300, hidden=(16,))
    run = saliency_during_training(problem, 6, every=3, progress=False)
    levels = representation_vs_parameter(run.probes["saliency"], run.probes["conflict"])
    assert levels.representation.dims == ("step", "pair") and levels.step.values.tolist() == [0, 3]
    np.testing.assert_allclose(levels.parameter.sel(pair="t0–t2"), run.probes["conflict"].cosine.sel(task="t0", other_task="t2"))
    assert np.isfinite(levels.spearman).all() and (np.abs(levels.spearman) <= 1).all()


def test_attribution_validity_study_scores_each_task_of_each_problem():
    study = attribution_validity_study(count=2, steps=20, n_samples=200, progress=False)
    assert study.sizes["configuration"] == 2
    for c, n_tasks in enumerate(study.n_tasks.values):
        assert np.isfinite(study.support_recall.values[c, :n_tasks]).all() and np.isnan(study.support_recall.values[c, n_tasks:]).all()
