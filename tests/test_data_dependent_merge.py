"""Fisher merging, RegMean and AdaMerging against their definitions, on tiny single-task models."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_batch, tiny_model
from workbench.merge import MergeData, make_merge
from workbench.merge.adamerging import prediction_entropy
from workbench.merge.fisher import fisher_information, fisher_merge
from workbench.merge.regmean import regmean_grams, regmean_merge
from workbench.models import conv_encoder, representation_shape
from workbench.studies.merged_models import encoder_part
from workbench.tasks import MultiTaskModel, classification_task, regression_task


def _single(seed: int, kind: str = "regression"):
    model = tiny_model(n_tasks=1, seed=seed)
    if kind == "classification":
        torch.manual_seed(seed)
        model = MultiTaskModel(model.encoder, [classification_task("t0", 3)], representation_dim=6)
    return model


def _encoder_names(model) -> list[str]:
    return list(encoder_part(model.state_dict()))


def test_regression_fisher_is_the_mean_squared_output_gradient():
    model = _single(0)
    x, _ = tiny_batch(model, n=7)
    fisher = fisher_information(model, "t0", x, _encoder_names(model), n_examples=7)
    shared = [p for _, p in model.encoder.named_parameters()]
    expected = [torch.zeros_like(p) for p in shared]
    for row in range(7):
        grads = torch.autograd.grad(model(x[row : row + 1])["t0"].sum(), shared)
        expected = [e + g**2 / 7 for e, g in zip(expected, grads)]
    for (name, got), want in zip(fisher.items(), expected):
        torch.testing.assert_close(got, want, msg=name)


def test_classification_fisher_is_seeded_and_positive():
    model = _single(1, "classification")
    x, _ = tiny_batch(model, n=20)
    names = _encoder_names(model)
    first, again = fisher_information(model, "t0", x, names, seed=3), fisher_information(model, "t0", x, names, seed=3)
    for name in first:
        torch.testing.assert_close(first[name], again[name])
        assert (first[name] >= 0).all() and first[name].sum() > 0


def test_fisher_merge_is_a_weighted_mean_that_follows_the_larger_fisher():
    a = {"encoder.w": torch.tensor([0.0, 0.0]), "encoder.b": torch.tensor([1.0])}
    b = {"encoder.w": torch.tensor([1.0, 1.0]), "encoder.b": torch.tensor([3.0])}
    equal = fisher_merge([a, b], [{"encoder.w": torch.ones(2)}, {"encoder.w": torch.ones(2)}])
    torch.testing.assert_close(equal["encoder.w"], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(equal["encoder.b"], torch.tensor([2.0]))  # no Fisher: averaged
    lopsided = fisher_merge([a, b], [{"encoder.w": torch.tensor([1.0, 0.0])}, {"encoder.w": torch.tensor([0.0, 1.0])}])
    torch.testing.assert_close(lopsided["encoder.w"], torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one Fisher per model"):
        fisher_merge([a, b], [{}])


def test_registered_fisher_merges_the_base_tensors_with_each_models_own_fisher():
    models = {f"t{i}": _single(i) for i in range(2)}
    for task, model in models.items():  # each single-task model serves its own task, named after it
        model.tasks = {task: model.tasks["t0"]}
        model.heads = nn.ModuleDict({task: model.heads["t0"]})
    inputs = {task: tiny_batch(model, n=9, seed=3 + i)[0] for i, (task, model) in enumerate(models.items())}
    base = encoder_part(_single(5).state_dict())
    merged = make_merge("fisher", n_examples=9)(base, models, MergeData(inputs)).weights
    fishers = [fisher_information(model, task, inputs[task], list(base), 9) for task, model in models.items()]
    expected = fisher_merge([encoder_part(m.state_dict()) for m in models.values()], fishers)
    assert list(merged) == list(base)
    for name in base:
        torch.testing.assert_close(merged[name], expected[name])


def test_regmean_minimises_the_summed_output_distance_of_each_linear_layer():
    """With alpha = 1, W* minimises Σ_t ‖X_t W − X_t W_t‖²: the normal equations hold."""
    models = [_single(seed) for seed in (0, 1, 2)]
    inputs = [tiny_batch(m, n=30, seed=10 + i)[0] for i, m in enumerate(models)]
    names = _encoder_names(models[0])
    grams = [regmean_grams(m, x, names, alpha=1.0) for m, x in zip(models, inputs)]
    merged = regmean_merge([encoder_part(m.state_dict()) for m in models], grams)
    name = "encoder.0.weight"
    w_star = merged[name].double().T
    residual = sum(x.double().T @ (x.double() @ (w_star - m.state_dict()[name].double().T)) / 30 for m, x in zip(models, inputs))
    assert residual.abs().max() < 1e-6
    torch.testing.assert_close(merged["encoder.0.bias"], torch.stack([m.state_dict()["encoder.0.bias"] for m in models]).mean(0))


def test_regmean_of_identical_inputs_is_the_average_and_of_one_model_is_that_model():
    models = [_single(seed) for seed in (0, 1)]
    x = tiny_batch(models[0], n=40)[0]
    names = _encoder_names(models[0])
    grams = [regmean_grams(m, x, names, alpha=0.9) for m in models]
    grams[1] = grams[0]
    merged = regmean_merge([encoder_part(m.state_dict()) for m in models], grams)
    average = (models[0].state_dict()["encoder.0.weight"] + models[1].state_dict()["encoder.0.weight"]) / 2
    torch.testing.assert_close(merged["encoder.0.weight"], average, atol=1e-5, rtol=1e-5)
    alone = regmean_merge([encoder_part(models[0].state_dict())], grams[:1])
    torch.testing.assert_close(alone["encoder.0.weight"], models[0].state_dict()["encoder.0.weight"], atol=1e-5, rtol=1e-5)


def test_regmean_treats_a_convolution_as_a_linear_map_of_its_patches():
    torch.manual_seed(0)
    net = conv_encoder(1, (3, 4, 2))
    model = MultiTaskModel(net, [regression_task("t")], representation_dim=representation_shape(net, torch.zeros(1, 1, 12, 16)))
    x = torch.rand(5, 1, 12, 16)
    grams = regmean_grams(model, x, _encoder_names(model), alpha=1.0)
    first = "encoder.0.weight"
    assert model.encoder[0].kernel_size == (3, 3) and model.encoder[0].padding == (1, 1)  # a 3 x 3 convolution, padded
    patches = nn.functional.unfold(x.double(), 3, padding=1).transpose(1, 2).reshape(-1, 9)  # (5 · 12 · 16, 9)
    torch.testing.assert_close(grams[first], patches.T @ patches / patches.shape[0])
    with pytest.raises(ValueError, match="alpha"):
        regmean_grams(model, x, [first], alpha=1.5)


def _classifiers(n_tasks: int = 2):
    """A base encoder and, per task, a fine-tuned model (the base encoder randomly perturbed, every task's head) and inputs."""
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Sequential(nn.Linear(5, 6), nn.Tanh()), [classification_task(f"c{i}", 3) for i in range(n_tasks)], representation_dim=6)
    base = encoder_part(model.state_dict())
    tuned = {}
    for i in range(n_tasks):
        tuned[f"c{i}"] = copy.deepcopy(model)
        tuned[f"c{i}"].load_state_dict({k: v + 0.5 * torch.randn_like(v) for k, v in base.items()}, strict=False)
    inputs = {f"c{i}": torch.randn(50, 5) for i in range(n_tasks)}
    return base, tuned, MergeData(inputs)


def _entropy(tuned, data, weights) -> float:
    total = 0.0
    with torch.no_grad():
        for task, model in tuned.items():
            outputs = torch.func.functional_call(model, weights, (data.inputs[task],), strict=False)
            total += float(prediction_entropy(outputs[task]))
    return total


def test_adamerging_starts_from_task_arithmetic_and_lowers_the_entropy():
    base, tuned, data = _classifiers()
    start = make_merge("task_wise_adamerging", steps=0)(base, tuned, data)
    expected = make_merge("task_arithmetic")(base, tuned).weights  # λ = 0.3
    for name in base:
        torch.testing.assert_close(start.weights[name], expected[name])
    learned = make_merge("layer_wise_adamerging", steps=60, lr=0.05, batch_size=50)(base, tuned, data)
    layerwise = learned.details.coefficient
    assert layerwise.dims == ("task", "layer") and layerwise.shape == (2, len(base))
    assert _entropy(tuned, data, learned.weights) < _entropy(tuned, data, start.weights)
    assert not np.allclose(layerwise.values, 0.3)


def test_adamerging_refuses_regression_tasks():
    model = tiny_model(n_tasks=1)
    base = encoder_part(model.state_dict())
    with pytest.raises(ValueError, match="task 't0' \\(regression\\)"):
        make_merge("task_wise_adamerging")(base, {"t0": model}, MergeData({"t0": torch.randn(4, 5)}))


def test_fisher_without_vmap_gives_the_same_numbers(monkeypatch):
    model = _single(1, "classification")
    x, _ = tiny_batch(model, n=12)
    names = _encoder_names(model)
    batched = fisher_information(model, "t0", x, names, seed=2, chunk=5)

    def no_batching_rule(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: no_batching_rule)
    looped = fisher_information(model, "t0", x, names, seed=2, chunk=5)
    for name in batched:
        torch.testing.assert_close(looped[name], batched[name])
