"""Laws of the gated mixtures of experts (MMoE, CGC, DSelect-k) beyond the battery every architecture passes."""

from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.models import Backbone, make_architecture, mlp_encoder
from workbench.models.dselect_k import DSelectGate, smooth_step
from workbench.tasks import regression_task

TASKS = [regression_task("a"), regression_task("b")]
MLP = Backbone("MLP", partial(mlp_encoder, 5, (6,)), (6,), inputs=(5,))
GATED = {"mmoe": {"n_experts": 3}, "cgc": {"n_experts": 2, "own_experts": 2}, "dselect_k": {"n_experts": 4, "k": 2}}


@given(st.floats(-3, 3), st.floats(0.1, 4))
def test_the_smooth_step_is_flat_outside_its_band_and_rises_through_a_half(u, gamma):
    value = smooth_step(torch.tensor(u, dtype=torch.float64), gamma).item()
    assert 0 <= value <= 1
    if abs(u) >= gamma / 2:
        assert value == (1.0 if u > 0 else 0.0)
    assert smooth_step(torch.tensor(0.0, dtype=torch.float64), gamma).item() == 0.5
    below, above = (smooth_step(torch.tensor(edge, dtype=torch.float64), gamma).item() for edge in (-gamma / 2 + 1e-9, gamma / 2 - 1e-9))
    assert below == pytest.approx(0, abs=1e-8) and above == pytest.approx(1, abs=1e-8)  # continuous at the band's edges


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 3), st.integers(0, 10_000))
def test_each_selector_s_weights_sum_to_one_when_the_experts_are_a_power_of_two(n, k, seed):
    torch.manual_seed(seed)
    gate = DSelectGate(5, n, k=min(k, n))
    torch.nn.init.normal_(gate.selectors.weight, std=3.0)
    features = torch.randn(6, 5)
    torch.testing.assert_close(gate.selections(features).sum(-1), torch.ones(6, gate.k))
    torch.testing.assert_close(gate(features).sum(-1), torch.ones(6))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(1, 3), st.integers(0, 10_000))
def test_saturated_selectors_weigh_at_most_k_experts(n, k, seed):
    torch.manual_seed(seed)
    k = min(k, n)
    gate = DSelectGate(5, n, k=k)
    with torch.no_grad():  # every |Z| far outside the smooth step's band
        gate.selectors.bias.copy_(100.0 * torch.randn(gate.selectors.bias.shape).sign())
    weights = gate(torch.randn(6, 5))
    assert ((weights > 0).sum(-1) <= k).all()
    selections = gate.selections(torch.randn(6, 5))
    assert ((selections == 0) | (selections == 1)).all()  # each selector is one expert, or none (a code past n)


def _all_mass_on(model, name: str, task: str, expert: int) -> None:
    """Make ``task``'s gate put (numerically) all its weight on its ``expert``-th expert."""
    gate = model.encoder.gates[task]
    with torch.no_grad():
        if name == "dselect_k":
            gate.selectors.weight.zero_()
            gate.selectors.bias.copy_(torch.tensor([100.0 if bit else -100.0 for bit in gate.codes[expert]]).repeat(gate.k))
        else:
            gate.weight.zero_()
            gate.bias.fill_(-100.0)
            gate.bias[expert] = 100.0


@pytest.mark.parametrize("name", GATED)
def test_a_gate_with_all_its_mass_on_one_expert_gives_that_expert(name):
    torch.manual_seed(0)
    model = make_architecture(name, TASKS, MLP, experts="backbone", **GATED[name])
    x = torch.randn(7, 5)
    encoder = model.encoder
    for task in model.task_names:
        experts = list(encoder.experts) + (list(encoder.own_experts[task]) if encoder.own_experts else [])
        for expert in range(len(experts)):
            _all_mass_on(model, name, task, expert)
            mixtures, _ = encoder.mixtures(x)
            torch.testing.assert_close(mixtures[model.task_names.index(task)], experts[expert](x))


def test_cgc_s_tasks_see_the_shared_experts_and_their_own_only():
    torch.manual_seed(0)
    model = make_architecture("cgc", TASKS, MLP, experts="backbone", n_experts=2, own_experts=1)
    x = torch.randn(7, 5)
    _, weights = model.encoder.mixtures(x)
    assert [tuple(w.shape) for w in weights] == [(7, 3), (7, 3)]
    before = model(x)
    with torch.no_grad():
        for p in model.encoder.own_experts["b"].parameters():
            p.add_(1.0)
    after = model(x)
    torch.testing.assert_close(before["a"], after["a"])  # b's own expert is not among a's
    assert not torch.allclose(before["b"], after["b"])


@pytest.mark.parametrize("name, options, message", [
    ("mmoe", {"n_experts": 0}, "at least one expert"),
    ("cgc", {"own_experts": 0}, "cgc: own_experts must be at least 1"),
    ("cgc", {"n_experts": -1}, "cgc: n_experts"),
    ("dselect_k", {"n_experts": 0}, "dselect_k: n_experts must be at least 1"),
    ("dselect_k", {"n_experts": 3, "k": 4}, r"dselect_k: k \(the selectors\) must be between 1 and the 3 experts, got 4"),
    ("dselect_k", {"k": 0}, "dselect_k: k"),
    ("dselect_k", {"gamma": 0.0}, "dselect_k: gamma must be positive"),
    ("cgc", {"experts": "tree"}, "cgc: experts must be 'mlp' or 'backbone'"),
])
def test_bad_options_are_refused_naming_the_architecture_and_the_option(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_architecture(name, TASKS, MLP, **options)
