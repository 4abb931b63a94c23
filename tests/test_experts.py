"""Laws of the gated mixtures of experts (MMoE, CGC, DSelect-k) beyond the battery every architecture passes."""

from functools import partial

import numpy as np
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


def _read(model, x):
    from workbench.probes import make_probe

    return make_probe("expert_gates")(model, (x, {t: torch.randn(len(x)) for t in model.task_names}))


@pytest.mark.parametrize("name", ["mmoe", "cgc", "dselect_k", "ple", "task_moe", "adatt"])
def test_each_task_s_utilisation_is_a_distribution_over_the_experts_it_weighs(name):
    torch.manual_seed(0)
    options = {"ple": {}, "mmoe": {"n_experts": 3}, "cgc": {"n_experts": 2, "own_experts": 2}, "dselect_k": {"n_experts": 4, "k": 2},
               "task_moe": {"n_experts": 3, "k": 2}, "adatt": {"widths": (4, 3), "experts_per_task": 2}}[name]
    model = make_architecture(name, TASKS, MLP, **options)
    reading = _read(model, torch.randn(9, 5))
    np.testing.assert_allclose(reading.utilisation.sum("expert").values, 1.0, rtol=1e-6)
    sizes = {"ple": 2, "mmoe": 3, "cgc": 4, "dselect_k": 4, "task_moe": 3, "adatt": 4}[name]  # the experts each task's gate weighs
    assert (reading.gate_size == sizes).all()
    assert ((reading.gate_entropy >= 0) & (reading.gate_entropy <= np.log(reading.gate_size) + 1e-9)).all()
    own = reading.own_share.values
    assert np.isnan(own).all() if name in ("mmoe", "dselect_k", "task_moe") else ((own > 0) & (own < 1)).all()
    assert ((reading.ownership >= 1 / len(TASKS) - 1e-9) & (reading.ownership <= 1 + 1e-9)).all()
    np.testing.assert_allclose(np.diag(reading.gate_overlap.values), 1.0, rtol=1e-6)
    if name == "cgc":  # a task never weighs another's own experts
        assert float(reading.utilisation.sel(task="a", expert="b 0").max()) == 0.0


def test_the_readings_of_gates_that_pick_one_expert_each():
    torch.manual_seed(0)
    model = make_architecture("cgc", TASKS, MLP, experts="backbone", n_experts=1, own_experts=1)
    x = torch.randn(8, 5)
    for task in model.task_names:  # each task on its own expert
        _all_mass_on(model, "cgc", task, 1)
    reading = _read(model, x).isel(level=0)
    assert reading.utilisation.sel(task="a").values.round(6).tolist() == [0.0, 1.0, 0.0]  # shared 0, a 0, b 0
    np.testing.assert_allclose(reading.gate_entropy.values, 0.0, atol=1e-6)
    np.testing.assert_allclose(reading.ownership.sel(expert=["a 0", "b 0"]).values, 1.0)
    assert abs(float(reading.gate_overlap.sel(task="a", other_task="b"))) < 1e-6  # no expert in common
    for task in model.task_names:  # both tasks on the shared expert
        _all_mass_on(model, "cgc", task, 0)
    shared = _read(model, x).isel(level=0)
    np.testing.assert_allclose(float(shared.ownership.sel(expert="shared 0")), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(shared.gate_overlap.sel(task="a", other_task="b")), 1.0, rtol=1e-6)


def test_a_dead_expert_reads_as_dead_and_still():
    torch.manual_seed(0)
    model = make_architecture("mmoe", TASKS, MLP, experts="backbone", n_experts=2)
    with torch.no_grad():  # expert 1's ReLU never opens
        model.encoder.experts[1][0].weight.zero_()
        model.encoder.experts[1][0].bias.fill_(-1.0)
    reading = _read(model, torch.randn(10, 5)).isel(level=0)
    assert float(reading.dead_fraction.sel(expert="shared 1")) == 1.0 and float(reading.output_std.sel(expert="shared 1")) == 0.0
    assert float(reading.dead_fraction.sel(expert="shared 0")) < 1.0 and float(reading.output_std.sel(expert="shared 0")) > 0.0


def test_the_gates_probe_refuses_an_architecture_without_gates_and_records_over_training():
    from workbench.probes import ProbeRecorder
    from workbench.tasks import MultiTaskData
    from workbench.train import train

    with pytest.raises(ValueError, match="expert_gates reads the gates of a gated architecture, .* a Sequential, has none"):
        _read(make_architecture("hps", TASKS, MLP), torch.randn(4, 5))
    torch.manual_seed(0)
    data = MultiTaskData(torch.randn(64, 5), {"a": torch.randn(64), "b": torch.randn(64)}, TASKS)
    run = train(make_architecture("ple", TASKS, MLP), data, 6, batch_size=16, recorders=[ProbeRecorder("expert_gates", every=2)], progress=False)
    history = run.probes["expert_gates"]
    assert history.utilisation.dims == ("step", "level", "task", "expert") and history.step.values.tolist() == [0, 2, 4]


def test_the_utilisation_picture_has_a_slider_over_the_steps_and_a_menu_over_the_levels():
    from workbench.probes import ProbeRecorder
    from workbench.tasks import MultiTaskData
    from workbench.train import train
    from workbench.viz import expert_utilisation

    torch.manual_seed(0)
    data = MultiTaskData(torch.randn(64, 5), {"a": torch.randn(64), "b": torch.randn(64)}, TASKS)
    two_stages = Backbone("MLP", partial(mlp_encoder, 5, (8, 6)), (6,), inputs=(5,))
    run = train(make_architecture("ple", TASKS, two_stages), data, 6, batch_size=16, recorders=[ProbeRecorder("expert_gates", every=2)], progress=False)
    history = run.probes["expert_gates"]
    fig = expert_utilisation(history)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["level 0", "level 1"]
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "2", "4"] and slider.active == 2
    drawn = np.array(slider.steps[1].args[0]["z"][0], dtype=float)
    np.testing.assert_allclose(drawn, history.utilisation.isel(level=0).sel(step=2).values, atol=5e-4)
    with pytest.raises(ValueError, match="draws an expert_gates reading"):
        expert_utilisation(history.assign_attrs(probe="gradient_conflict"))


def test_a_task_routed_moe_of_one_expert_is_hard_sharing_with_that_expert():
    torch.manual_seed(0)
    model = make_architecture("task_moe", TASKS, MLP, experts="backbone", n_experts=1, k=1)
    x = torch.randn(6, 5)
    z = model.represent(x)
    for t in range(len(TASKS)):
        torch.testing.assert_close(z[:, t], model.encoder.experts[0](x))


def test_each_task_routes_a_sample_to_k_experts_and_only_those_run_on_it():
    torch.manual_seed(0)
    model = make_architecture("task_moe", TASKS, MLP, experts="backbone", n_experts=4, k=2)
    x = torch.randn(9, 5)
    _, weights = model.encoder.mixtures(x)
    for gate in weights:
        assert ((gate > 0).sum(-1) == 2).all()
        torch.testing.assert_close(gate.sum(-1), torch.ones(9))
    ran = []
    for e, expert in enumerate(model.encoder.experts):
        expert.register_forward_hook(lambda module, inputs, output, e=e: ran.append((e, len(inputs[0]))))
    for task in model.task_names:  # every task sends every sample to experts 0 and 2
        with torch.no_grad():
            gate = model.encoder.gates[task].logits
            gate.weight.zero_()
            gate.bias.copy_(torch.tensor([5.0, -5.0, 4.0, -5.0]))
    model.represent(x)
    assert dict(ran[-4:]) == {0: 9, 1: 0, 2: 9, 3: 0}


def test_a_noisy_router_is_noisy_in_training_only():
    torch.manual_seed(0)
    model = make_architecture("task_moe", TASKS, MLP, n_experts=4, k=1, noisy=True)
    x = torch.randn(32, 5)
    model.eval()
    torch.testing.assert_close(model.represent(x), model.represent(x))
    model.train()
    assert not torch.equal(model.encoder.mixtures(x)[1][0], model.encoder.mixtures(x)[1][0])
    with pytest.raises(ValueError, match=r"task_moe: k \(the experts each sample goes to\) must be between 1 and the 4 experts, got 5"):
        make_architecture("task_moe", TASKS, MLP, n_experts=4, k=5)


def test_an_expert_no_sample_was_routed_to_served_nothing_rather_than_died():
    torch.manual_seed(0)
    model = make_architecture("task_moe", TASKS, MLP, experts="backbone", n_experts=3, k=1)
    for task in model.task_names:  # every sample to expert 0
        with torch.no_grad():
            model.encoder.gates[task].logits.weight.zero_()
            model.encoder.gates[task].logits.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    reading = _read(model, torch.randn(8, 5)).isel(level=0)
    assert np.isnan(reading.dead_fraction.sel(expert=["shared 1", "shared 2"]).values).all()
    assert float(reading.utilisation.sel(expert="shared 1").max()) == 0.0 and np.isfinite(float(reading.dead_fraction.sel(expert="shared 0")))


def _adatt_gate_on_own(model, task: str, m: int) -> None:
    """Make ``task``'s gate at every level put all its mass on its own first expert."""
    tasks = model.task_names
    for level in model.encoder.levels:
        with torch.no_grad():
            gate = level.gates[task]
            gate.weight.zero_()
            gate.bias.fill_(-100.0)
            gate.bias[tasks.index(task) * m] = 100.0


def test_adatt_s_output_is_its_gate_s_fusion_plus_its_own_residual():
    torch.manual_seed(0)
    model = make_architecture("adatt", TASKS, MLP, widths=(4,), experts_per_task=1)
    x = torch.randn(6, 5)
    features = model.encoder.trunk(x).flatten(1)
    level = model.encoder.levels[0]
    _adatt_gate_on_own(model, "a", 1)
    own = level.experts["a"][0](features)
    torch.testing.assert_close(model.represent(x)[:, 0], 2 * own)  # the gate's whole mass on f_a, plus the residual f_a
    with torch.no_grad():  # b's experts do not reach a, whose gate ignores them
        for p in level.experts["b"].parameters():
            p.add_(1.0)
    torch.testing.assert_close(model.represent(x)[:, 0], 2 * own)


def test_adatt_with_several_experts_weighs_its_residual_and_refuses_bad_options():
    torch.manual_seed(0)
    model = make_architecture("adatt", TASKS, MLP, widths=(4, 3), experts_per_task=3)
    for level in model.encoder.levels:
        for v in level.residual.values():
            assert v.shape == (3,) and (v.abs() <= np.sqrt(1 / 3)).all()
    assert model.represent(torch.randn(2, 5)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"adatt needs at least one expert per task \(m=0\)"):
        make_architecture("adatt", TASKS, MLP, experts_per_task=0)
    with pytest.raises(ValueError, match=r"one level of positive width \(widths=\[\]\)"):
        make_architecture("adatt", TASKS, MLP, widths=())


def test_a_task_conditioned_router_is_shared_and_changing_only_the_task_changes_the_experts_chosen():
    torch.manual_seed(0)
    model = make_architecture("task_moe", TASKS, MLP, experts="backbone", n_experts=3, k=1, router="task_conditioned")
    router = model.encoder.gates[model.task_names[0]].router
    assert all(model.encoder.gates[task].router is router for task in model.task_names)
    assert "gates.a.router.logits.weight" in dict(model.shared_parameters())  # one router, seen by every task
    assert not any(name.startswith("encoder.") for params in model.task_parameters().values() for name, _ in params)
    x = torch.randn(8, 5)
    with torch.no_grad():  # the features' part of the logits equal for every expert: the task's column alone decides
        router.logits.weight[:, :5] = 0.0
        router.logits.bias.zero_()
        router.logits.weight[:, 5:] = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]])  # (expert, task): task t -> expert t
    _, weights = model.encoder.mixtures(x)
    for t, gate in enumerate(weights):
        assert (gate.argmax(-1) == t).all() and ((gate > 0).sum(-1) == 1).all()
    with torch.no_grad():
        router.logits.weight[:, 5:] = 1.0  # every task's code moves the logits alike: one routing for all
    _, weights = model.encoder.mixtures(x)
    assert all(torch.equal(gate, weights[0]) for gate in weights)
    with pytest.raises(ValueError, match=r"task_moe: router must be one of \['per_task', 'task_conditioned'\], not 'shared'"):
        make_architecture("task_moe", TASKS, MLP, router="shared")
