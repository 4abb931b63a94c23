"""Fisher merging and RegMean against their definitions, on tiny single-task models."""

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_batch, tiny_model
from workbench.encoders import conv_encoder, representation_shape
from workbench.merge.data_dependent import fisher_information, fisher_merge, regmean_grams, regmean_merge
from workbench.merge.models import encoder_part
from workbench.tasks import MultiTaskModel, classification_task, regression_task


def _single(seed: int, kind: str = "regression"):
    model = tiny_model(n_tasks=1, seed=seed)
    if kind == "classification":
        torch.manual_seed(seed)
        model = MultiTaskModel(model.encoder, [classification_task("t0", 3)], representation_dim=6)
    return model


def test_regression_fisher_is_the_mean_squared_output_gradient():
    model = _single(0)
    x, _ = tiny_batch(model, n=7)
    fisher = fisher_information(model, x, n_examples=7)
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
    first, again = fisher_information(model, x, seed=3), fisher_information(model, x, seed=3)
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


def test_regmean_minimises_the_summed_output_distance_of_each_linear_layer():
    """With alpha = 1, W* minimises Σ_t ‖X_t W − X_t W_t‖²: the normal equations hold."""
    models = [_single(seed) for seed in (0, 1, 2)]
    inputs = [tiny_batch(m, n=30, seed=10 + i)[0] for i, m in enumerate(models)]
    grams = [regmean_grams(m, x, alpha=1.0) for m, x in zip(models, inputs)]
    merged = regmean_merge([encoder_part(m.state_dict()) for m in models], grams)
    name = "encoder.0.weight"
    w_star = merged[name].double().T
    residual = sum(x.double().T @ (x.double() @ (w_star - m.state_dict()[name].double().T)) / 30 for m, x in zip(models, inputs))
    assert residual.abs().max() < 1e-6
    torch.testing.assert_close(merged["encoder.0.bias"], torch.stack([m.state_dict()["encoder.0.bias"] for m in models]).mean(0))


def test_regmean_of_identical_inputs_is_the_average_and_of_one_model_is_that_model():
    models = [_single(seed) for seed in (0, 1)]
    x = tiny_batch(models[0], n=40)[0]
    grams = [regmean_grams(m, x, alpha=0.9) for m in models]
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
    grams = regmean_grams(model, x, alpha=1.0)
    first = "encoder.0.weight"
    assert model.encoder[0].kernel_size == (3, 3) and model.encoder[0].padding == (1, 1)  # a 3 x 3 convolution, padded
    patches = nn.functional.unfold(x.double(), 3, padding=1).transpose(1, 2).reshape(-1, 9)  # (5 · 12 · 16, 9)
    torch.testing.assert_close(grams[first], patches.T @ patches / patches.shape[0])
    with pytest.raises(ValueError, match="alpha"):
        regmean_grams(model, x, alpha=1.5)


def _classifiers(n_tasks: int = 2):
    """A base encoder, per-task fine-tuned encoders (random perturbations) and a model with every task's head."""
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Sequential(nn.Linear(5, 6), nn.Tanh()), [classification_task(f"c{i}", 3) for i in range(n_tasks)], representation_dim=6)
    base = encoder_part(model.state_dict())
    tuned = {f"c{i}": {k: v + 0.5 * torch.randn_like(v) for k, v in base.items()} for i in range(n_tasks)}
    inputs = {f"c{i}": torch.randn(50, 5) for i in range(n_tasks)}
    return model, base, tuned, inputs


def test_adamerging_starts_from_task_arithmetic_and_lowers_the_entropy():
    from workbench.merge import merge
    from workbench.merge.data_dependent import _entropy, adamerging

    model, base, tuned, inputs = _classifiers()
    start, coefficients = adamerging(model, base, tuned, inputs, steps=0)
    expected = merge(tuned, base, "task_arithmetic", progress=False)  # λ = 0.3
    for name in base:
        torch.testing.assert_close(start[name], expected[name])

    def entropy(encoder):
        with torch.no_grad():
            outputs = torch.func.functional_call(model, encoder, (torch.cat(list(inputs.values())),), strict=False)
        return sum(float(_entropy(outputs[t])) for t in tuned)

    learned, layerwise = adamerging(model, base, tuned, inputs, granularity="layer", steps=60, lr=0.05, batch_size=50)
    assert layerwise.dims == ("task", "layer") and layerwise.shape == (2, len(base))
    assert entropy(learned) < entropy(start)
    assert not np.allclose(layerwise.values, 0.3)


def test_adamerging_refuses_regression_tasks_and_unknown_granularity():
    from workbench.merge.data_dependent import adamerging

    model = tiny_model(n_tasks=1)
    base = encoder_part(model.state_dict())
    with pytest.raises(ValueError, match="task 't0' \\(regression\\)"):
        adamerging(model, base, {"t0": base}, {"t0": torch.randn(4, 5)})
    with pytest.raises(ValueError, match="granularity"):
        adamerging(model, base, {"t0": base}, {"t0": torch.randn(4, 5)}, granularity="block")


def test_fisher_without_vmap_gives_the_same_numbers(monkeypatch):
    model = _single(1, "classification")
    x, _ = tiny_batch(model, n=12)
    batched = fisher_information(model, x, seed=2, chunk=5)

    def no_batching_rule(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: no_batching_rule)
    looped = fisher_information(model, x, seed=2, chunk=5)
    for name in batched:
        torch.testing.assert_close(looped[name], batched[name])
