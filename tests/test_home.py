"""Laws of HoME (workbench.models.home) beyond the battery every architecture passes: with its remedies off it is CGC
(MMoE without own experts) exactly; each remedy does what it says; bad options are refused, naming home and the option."""

from functools import partial

import pytest
import torch
from torch import nn

from workbench.models import Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.models.home import FeatureGate, home_expert
from workbench.tasks import classification_task, regression_task

TASKS = [regression_task("a"), regression_task("b"), classification_task("c", 3)]
BACKBONES = {
    "MLP": Backbone("MLP", partial(mlp_encoder, 5, (8, 6)), (6,), inputs=(5,)),
    "CNN": Backbone("CNN", partial(conv_encoder, 1, (4, 3)), (3, 4, 4), inputs=(1, 8, 8)),
}
OFF = {"hierarchy": False, "expert_norm": False, "feature_gates": False}
SMALL = {"expert_hidden": (5,), "meta_hidden": (4,), "meta_experts": 1, "category_experts": 1, "rank": 2}


def build(seed: int = 0, backbone: str = "MLP", **options):
    torch.manual_seed(seed)
    return make_architecture("home", TASKS, BACKBONES[backbone], **options)


def inputs(backbone: str = "MLP", n: int = 9, seed: int = 1):
    return torch.randn(n, *BACKBONES[backbone].inputs, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("reference, counts", [("cgc", {"n_experts": 2, "own_experts": 1}), ("mmoe", {"n_experts": 3, "own_experts": 0})])
def test_with_its_remedies_off_and_one_level_it_is_cgc_or_mmoe_with_the_same_weights(reference, counts, backbone):
    torch.manual_seed(3)
    their_counts = {"n_experts": counts["n_experts"]} if reference == "mmoe" else counts
    other = make_architecture(reference, TASKS, BACKBONES[backbone], expert_hidden=(5,), **their_counts)
    model = build(seed=4, backbone=backbone, expert_hidden=(5,), **counts, **OFF)
    model.load_state_dict(other.state_dict())  # strict: the same modules under the same names
    x = inputs(backbone)
    ours, theirs = model(x), other(x)
    for task in ours:
        torch.testing.assert_close(ours[task], theirs[task], rtol=0, atol=1e-6)
    mine, reference_gates = model.encoder.gate_readings(x), other.encoder.gate_readings(x)
    assert list(mine) == list(reference_gates) == ["experts"]
    for task in model.task_names:
        assert model.encoder.expert_names(task) == other.encoder.expert_names(task)
        torch.testing.assert_close(mine["experts"][task].weights, reference_gates["experts"][task].weights, rtol=0, atol=1e-6)
    assert {t: [n for n, _ in p] for t, p in model.task_parameters().items()} == {t: [n for n, _ in p] for t, p in other.task_parameters().items()}


def test_a_feature_gate_whose_product_ab_is_zero_passes_its_input_unchanged_and_otherwise_scales_it_by_2_sigmoid():
    torch.manual_seed(0)
    gate, v = FeatureGate(6, 2), torch.randn(5, 6)
    torch.testing.assert_close(gate(v), v, rtol=0, atol=0)  # B starts at 0: the identity
    with torch.no_grad():
        gate.b.normal_()
        gate.a.zero_()
    torch.testing.assert_close(gate(v), v, rtol=0, atol=0)  # A = 0 too: 2σ(0) = 1
    with torch.no_grad():
        gate.a.normal_()
    scaled = gate(v)
    torch.testing.assert_close(scaled, v * 2 * torch.sigmoid(v @ gate.a @ gate.b))
    assert not torch.allclose(scaled, v)


def test_with_feature_gates_every_expert_reads_its_input_through_its_own_gate_and_each_task_adds_a_self_gated_residual():
    model = build(hierarchy=False, expert_norm=False, **{k: SMALL[k] for k in ("expert_hidden", "rank")})
    encoder = model.encoder
    experts = [*encoder.experts, *(e for group in encoder.own_experts.values() for e in group)]
    gates = [expert[0] for expert in experts]
    assert all(isinstance(g, FeatureGate) for g in gates) and len({id(g) for g in gates}) == len(experts)
    x = inputs()
    z, readings = encoder(x), encoder.gate_readings(x)["experts"]
    h = encoder.trunk(x).flatten(1)
    for t, task in enumerate(model.task_names):
        reading = readings[task]
        mixture = torch.einsum("be,bec->bc", reading.weights, reading.outputs)
        residual = torch.einsum("be,bec->bc", torch.sigmoid(encoder.self_gates[task](h)), reading.outputs[:, len(encoder.experts):])
        torch.testing.assert_close(z[:, t], mixture + residual)
        assert residual.abs().sum() > 0


def _pre_activations(model, x, activation: type[nn.Module]) -> list[torch.Tensor]:
    """The inputs of every ``activation`` module inside the experts of both levels, on ``x``."""
    seen = []
    hooks = [m.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
             for m in model.encoder.modules() if isinstance(m, activation) and m not in set(model.encoder.trunk.modules())]
    model(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_normalised_experts_feed_swish_a_per_unit_batch_mean_of_zero_in_training_and_relu_experts_do_not():
    x = inputs(n=64) * 3 + 5  # far from zero mean: only a batch norm centres what the experts compute from it
    model = build(**SMALL).train()
    seen = _pre_activations(model, x, nn.SiLU)
    # each task its own category: the meta level's shared expert runs once and the 3 categories' own, the task level's
    # shared expert once on each category's meta mixture and the 3 tasks' own
    assert len(seen) == 1 + 3 + 3 + 3
    for pre in seen:
        torch.testing.assert_close(pre.mean(0), torch.zeros(pre.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(pre.var(0, unbiased=False), torch.ones(pre.shape[1]), atol=5e-2, rtol=0)  # var / (var + eps)
    assert not any(isinstance(m, nn.ReLU) for m in model.encoder.modules() if m not in set(model.encoder.trunk.modules()))
    plain = build(**{**SMALL, "expert_norm": False}).train()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert any(pre.mean(0).abs().max() > 1e-2 for pre in _pre_activations(plain, x, nn.ReLU))


def test_a_home_expert_with_norm_is_linear_batchnorm_swish_per_width():
    expert = home_expert(6, (5, 4), expert_norm=True, rank=None)
    assert [type(m) for m in expert] == [nn.Linear, nn.BatchNorm1d, nn.SiLU] * 2
    assert expert(torch.randn(8, 6)).shape == (8, 4)


def test_the_task_level_reads_its_category_s_meta_mixture_and_a_category_of_one_task_is_that_task_s_own():
    model = build(**SMALL, categories={"a": "ab", "b": "ab", "c": "c"})
    encoder, x = model.encoder, inputs()
    readings = encoder.gate_readings(x)
    assert list(readings) == ["meta", "experts"]
    torch.testing.assert_close(readings["meta"]["a"].weights, readings["meta"]["b"].weights, rtol=0, atol=0)  # one gate for the category
    assert readings["meta"]["a"].experts == ["shared meta 0", "ab meta 0"] and readings["meta"]["c"].experts == ["shared meta 0", "c meta 0"]
    assert encoder.expert_names("c") == ["shared meta 0", "c meta 0", "shared 0", "c 0"]
    before = model(x)
    with torch.no_grad():  # change category ab's meta expert: a and b move, c does not
        for p in encoder.meta.own_experts["ab"].parameters():
            p.add_(0.5)
    after = model(x)
    assert not torch.allclose(before["a"], after["a"]) and not torch.allclose(before["b"], after["b"])
    torch.testing.assert_close(before["c"], after["c"], rtol=0, atol=0)
    own = {task: {name for name, _ in params} for task, params in encoder.task_parameters().items()}
    assert any(name.startswith("meta.own_experts.c.") for name in own["c"]) and any(name.startswith("meta.gates.c.") for name in own["c"])
    assert not any(name.startswith("meta.") for name in own["a"] | own["b"])  # category ab's meta level serves two tasks: shared
    shared = {name for name, _ in model.shared_parameters()}
    assert {"meta.gates.ab.weight", "meta.gates.ab.bias"} <= shared


@pytest.mark.parametrize("options, message", [
    ({"n_experts": 0, "own_experts": 0}, r"^home: a gate needs at least one expert .*n_experts=0 and own_experts=0"),
    ({"meta_experts": 0, "category_experts": 0}, r"^home: a gate needs at least one expert .*meta_experts=0 and category_experts=0"),
    ({"own_experts": -1}, r"^home: own_experts must be at least 0"),
    ({"categories": {"a": "x", "b": "x", "c": "y", "d": "y"}}, r"^home: categories .*unknown tasks \['d'\] and misses \[\]"),
    ({"categories": {"a": "x", "b": "x"}}, r"^home: categories .*unknown tasks \[\] and misses \['c'\]"),
    ({"categories": {"a": "a", "b": "a", "c": "c"}}, r"^home: categories: category 'a' is named after a task but holds \['a', 'b'\]"),
    ({"categories": {"a": "x", "b": "x", "c": "x"}, "hierarchy": False}, r"^home: categories .*needs hierarchy=True"),
    ({"rank": 0}, r"^home: the feature gates' rank must be at least 1, got 0"),
    ({"expert_hidden": ()}, r"^home: expert_hidden must be one or more positive widths"),
    ({"meta_hidden": (4, 0)}, r"^home: meta_hidden must be one or more positive widths"),
])
def test_bad_options_are_refused_naming_home_and_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        build(**options)


def test_without_feature_gates_the_rank_is_not_read_and_without_hierarchy_the_meta_options_are_not():
    model = build(feature_gates=False, hierarchy=False, rank=0, meta_experts=0, category_experts=0)
    assert model.encoder.meta is None and model.encoder.self_gates is None
    assert not any(isinstance(m, FeatureGate) for m in model.modules())
