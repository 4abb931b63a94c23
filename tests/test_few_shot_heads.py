"""Ridge heads fitted on a few examples: scikit-learn's Ridge, leave-one-out by refitting, refusals that change nothing."""

import numpy as np
import pytest
import torch
from torch import nn

from workbench.models.few_shot_heads import fit_heads, ridge_fit
from workbench.tasks import MultiTaskModel, classification_task, regression_task


def _problem(n=12, d=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = z[:, :3] @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    return z, y


@pytest.mark.parametrize("ridge", [1e-3, 0.5, 10.0])
def test_the_ridge_head_is_scikit_learns_ridge_with_its_intercept_unpenalised(ridge):
    from sklearn.linear_model import Ridge

    z, y = _problem()
    weight, bias, _ = ridge_fit(z, y, ridge)
    reference = Ridge(alpha=ridge).fit(z.numpy(), y.numpy().ravel())
    np.testing.assert_allclose(weight.numpy()[0], reference.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bias.numpy()[0], reference.intercept_, rtol=1e-8, atol=1e-10)


def test_the_leave_one_out_predictions_are_those_of_the_heads_refitted_without_each_example():
    z, y = _problem(n=9, d=15, seed=1)  # fewer examples than features: the fitted head's own error is near zero
    _, _, loo = ridge_fit(z, y, 0.3)
    for i in range(len(z)):
        keep = torch.arange(len(z)) != i
        weight, bias, _ = ridge_fit(z[keep], y[keep], 0.3)
        torch.testing.assert_close(loo[i], z[i] @ weight.T + bias, rtol=1e-9, atol=1e-10)


def test_fit_heads_sets_every_regression_head_and_returns_each_tasks_loss_of_its_leave_one_out_predictions():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 10), nn.Tanh())
    model = MultiTaskModel(encoder, [regression_task("a"), regression_task("b")], representation_dim=10)
    x = torch.randn(16, 6)
    with torch.no_grad():
        z = model.represent(x)
    targets = {"a": z @ torch.randn(10) + 1.0, "b": torch.randn(16)}
    losses = fit_heads(model, x, targets, ridge=1e-4)
    for task, y in targets.items():
        weight, bias, loo = ridge_fit(z, y.reshape(16, 1), 1e-4)
        torch.testing.assert_close(model.heads[task].weight.detach(), weight, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.heads[task].bias.detach(), bias, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(losses[task], torch.mean((loo.squeeze(1) - y) ** 2), rtol=1e-5, atol=1e-6)
    assert float(losses["a"]) < 1e-4 < float(losses["b"])  # a target the representation carries, and noise it does not


def test_fit_heads_refuses_what_has_no_closed_form_before_changing_any_head():
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Linear(4, 5), [regression_task("a"), classification_task("c", 3)], representation_dim=5)
    before = {name: p.detach().clone() for name, p in model.heads.named_parameters()}
    x, targets = torch.randn(8, 4), {"a": torch.randn(8), "c": torch.randint(0, 3, (8,))}
    with pytest.raises(ValueError, match=r"'c': 'a classification task \(only regressions are fitted\)'"):
        fit_heads(model, x, targets, ridge=1.0)
    regression = model.restricted(["a"])
    with pytest.raises(ValueError, match=r"'a': 'labelled on 5 of the 8 examples, not all'"):
        fit_heads(regression, x, {"a": torch.randn(5)}, ridge=1.0)
    with pytest.raises(ValueError, match=r"'a': 'its targets hold NaN or infinite values'"):
        fit_heads(regression, x, {"a": torch.tensor([0.0] * 7 + [float("nan")])}, ridge=1.0)
    with pytest.raises(ValueError, match="ridge must be positive"):
        fit_heads(regression, x, {"a": torch.randn(8)}, ridge=0.0)
    with pytest.raises(ValueError, match="at least two examples, got 1"):
        fit_heads(regression, x[:1], {"a": torch.randn(1)}, ridge=1.0)
    for name, p in model.heads.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
