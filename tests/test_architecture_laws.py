"""The laws every registered architecture obeys, on an MLP and a CNN backbone: the model contract holds, the gradient
engine agrees with autograd on it, every registered probe and a training step run on it. A new architecture is
tested the moment it is registered."""

import re
from functools import partial

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.gradients import model_task_jacobian
from workbench.models import ARCHITECTURES, Backbone, conv_encoder, make_architecture, mlp_encoder
from workbench.probes import PROBES, make_probe, task_matrix
from workbench.tasks import TaskInputs, classification_task, masked_batch, regression_task

TASKS = [regression_task("a"), regression_task("b"), classification_task("c", 3)]
BACKBONES = {
    "MLP": (Backbone("MLP", partial(mlp_encoder, 5, (8, 6)), (6,), inputs=(5,)), (5,)),
    "CNN": (Backbone("CNN", partial(conv_encoder, 1, (4, 3)), (3, 4, 4), inputs=(1, 8, 8)), (1, 8, 8)),
}
CASES = [(name, backbone) for name in ARCHITECTURES for backbone in BACKBONES]
# Options that give a small model; every architecture must accept being built without them too.
SMALL = {"mmoe": {"n_experts": 3, "expert_hidden": (5,)}, "cgc": {"n_experts": 2, "own_experts": 1, "expert_hidden": (5,)},
         "dselect_k": {"n_experts": 3, "k": 2, "expert_hidden": (5,)}, "ple": {"n_experts": 1, "own_experts": 1},
         "task_moe": {"n_experts": 3, "k": 2, "expert_hidden": (5,)}, "adatt": {"widths": (5, 4), "experts_per_task": 2},
         "mtan": {"reduction": 2},
         "home": {"n_experts": 1, "own_experts": 1, "expert_hidden": (5,), "meta_experts": 1, "category_experts": 1, "meta_hidden": (4,),
                  "rank": 2, "categories": {"a": "ab", "b": "ab", "c": "c"}},
         "multitab_net": {"dim": 8, "heads": 2, "ff": 16, "mask": "FxT_TxT"},
         "dtrn": {"width": 4, "embedding": 3, "rank": 2, "groups": 2, "reduction": 1},
         "task_expert": {"n_experts": 2, "expert_hidden": (5,)}}


def build(name: str, backbone: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_architecture(name, TASKS, BACKBONES[backbone][0], **{**SMALL.get(name, {}), **options})


def batch(backbone: str, n: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *BACKBONES[backbone][1], generator=g)
    return x, {"a": torch.randn(n, generator=g), "b": torch.randn(n, generator=g), "c": torch.randint(0, 3, (n,), generator=g)}


@pytest.mark.parametrize("name, backbone", CASES)
def test_the_model_contract_holds(name, backbone):
    model = build(name, backbone)
    x, targets = batch(backbone)
    outputs = model(x)
    assert list(outputs) == [t.name for t in TASKS]
    assert [tuple(o.shape) for o in outputs.values()] == [(7, t.out_features) for t in TASKS]
    assert model.represent(x).shape[0] == 7
    shared = {id(p) for _, p in model.shared_parameters()}
    own = {task: {id(p) for _, p in params} for task, params in model.task_parameters().items()}
    assert shared, "an architecture shares some parameters"
    for task, params in own.items():
        assert params and not params & shared, f"task {task!r}'s parameters are its own"
        assert not any(params & other for name, other in own.items() if name != task), f"task {task!r} shares its own parameters"
    assert shared | set().union(*own.values()) == {id(p) for p in model.parameters() if p.requires_grad}
    build(name, backbone, **{option: default for option, default in ARCHITECTURES[name].options().items()})  # the defaults build too


@pytest.mark.parametrize("name, backbone", CASES)
def test_a_tasks_own_parameters_get_no_gradient_from_the_other_tasks(name, backbone):
    model = build(name, backbone)
    losses = model.losses(*batch(backbone))
    for task, params in model.task_parameters().items():
        for other in model.task_names:
            if other == task:
                continue
            grads = torch.autograd.grad(losses[other], [p for _, p in params], retain_graph=True, allow_unused=True)
            assert all(g is None or not g.any() for g in grads), f"{other}'s loss reaches {task}'s parameters"


def shaped_batch(shape: str, backbone: str, make_batch=None):
    """The batch of a data shape: every task on the same samples, missing labels (``a`` on some samples, ``c`` on
    none), or a batch per task (each task's own samples, the encoder run once per task); ``make_batch(backbone, n, seed)``
    gives a batch of every task (this module's :func:`batch` unless told)."""
    batch_of = make_batch or batch
    x, targets = batch_of(backbone)
    if shape == "shared":
        return x, targets
    if shape == "missing labels":
        return masked_batch(x, targets, {"a": torch.arange(7) % 2 == 0, "c": torch.zeros(7, dtype=torch.bool)})
    groups = [batch_of(backbone, n=3 + g, seed=10 + g) for g in range(3)]
    return TaskInputs(tuple(x for x, _ in groups), {t.name: (g, None) for g, t in enumerate(TASKS)}), {t.name: groups[g][1][t.name] for g, t in enumerate(TASKS)}


SHAPES = ("shared", "missing labels", "a batch per task")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name, backbone", CASES)
def test_the_gradient_engine_equals_autograd(name, backbone, shape):
    model = build(name, backbone)
    x, targets = shaped_batch(shape, backbone)
    jacobian = model_task_jacobian(model, x, targets, task_grads=True, strategy="batched")
    losses = model.losses(x, targets)
    shared = model.shared_parameters()
    for index, task in enumerate(model.task_names):
        if task not in losses:  # labelled on no sample: no gradient at all
            assert torch.isnan(jacobian.losses[index]) and not any(block[index].any() for block in jacobian.blocks.values())
            continue
        expected = torch.autograd.grad(losses[task], [p for _, p in shared], retain_graph=True, allow_unused=True, materialize_grads=True)
        for (parameter, _), want in zip(shared, expected):
            torch.testing.assert_close(jacobian.blocks[parameter][index], want, msg=f"{task}, {parameter}")
        own = model.task_parameters()[task]
        for (parameter, _), want in zip(own, torch.autograd.grad(losses[task], [p for _, p in own], retain_graph=True)):
            torch.testing.assert_close(jacobian.task_grads[parameter], want, msg=f"{task}, {parameter}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name, backbone", CASES)
def test_every_registered_probe_runs_on_it(name, backbone, shape):
    model = build(name, backbone)
    x, targets = shaped_batch(shape, backbone)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sum(model.losses(*batch(backbone)).values()).backward()
    optimizer.step()
    for probe_name in PROBES:
        probe = make_probe(probe_name)
        if not probe.applies_to(model):  # a probe of gates on an architecture without them
            with pytest.raises(ValueError, match=f"{probe_name} reads the gates of a gated architecture"):
                probe(model, (x, targets))
            continue
        result = probe(model, (x, targets), **({"optimizer": optimizer} if probe.takes("optimizer") else {}))
        assert isinstance(result, xr.Dataset) and result.attrs["probe"] == probe_name
        if PROBES[probe_name].traits["pairwise"]:
            matrix = task_matrix(result)
            assert matrix.dims == ("source", "target") and matrix.shape == (3, 3)
            assert not np.isinf(matrix.values).any()


@pytest.mark.parametrize("labels", ["all", "missing"])
@pytest.mark.parametrize("name, backbone", CASES)
@pytest.mark.parametrize("method", ["ew", "upgrad"])
def test_it_trains_with_a_loss_weighting_and_a_gradient_method(name, backbone, method, labels):
    from workbench.tasks import MultiTaskData
    from workbench.train import train

    model = build(name, backbone)
    x, targets = batch(backbone, n=32)
    data = MultiTaskData(x, targets, TASKS)
    data = data if labels == "all" else data.without_labels(0.7, seed=1)
    run = train(model, data, 4, method=method, batch_size=16, progress=False)
    assert np.isfinite(run.history.train_loss.values).all()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_unknown_options_and_names_are_refused(name):
    with pytest.raises(ValueError, match=f"architecture {name!r} has no options \\['no_such_option'\\]"):
        make_architecture(name, TASKS, BACKBONES["MLP"][0], no_such_option=1)
    with pytest.raises(ValueError, match=r"unknown architecture 'mmeo'; available: " + re.escape(str(sorted(ARCHITECTURES)))):
        make_architecture("mmeo", TASKS, BACKBONES["MLP"][0])
    entry = ARCHITECTURES[name]
    assert entry.summary and entry.paper and entry.family


def test_mmoe_gates_are_task_parameters_trained_on_their_own_loss():
    model = build("mmoe", "MLP", experts="backbone")
    x, targets = batch("MLP", n=9)
    shared = [name for name, _ in model.shared_parameters()]
    assert shared and all(name.startswith("experts.") for name in shared)
    jacobian = model_task_jacobian(model, x, targets, task_grads=True, keep_representation_grads=True)
    losses = model.losses(x, targets)
    (expected,) = torch.autograd.grad(losses["b"], [model.encoder.gates["b"].weight])
    torch.testing.assert_close(jacobian.task_grads["encoder.gates.b.weight"], expected)
    assert jacobian.representation_grads.shape == (3, 9, 3, 6)
    assert not jacobian.representation_grads[0, :, 1:].any()  # ∂L_a/∂Z lives in slot 0 only


def test_mmoe_experts_on_the_backbone_read_the_input_and_refuse_named_inputs():
    model = build("mmoe", "CNN", experts="backbone")
    assert [name for name, _ in model.shared_parameters()][0] == "experts.0.0.weight"  # each expert a CNN on the image
    assert model(batch("CNN")[0])["c"].shape == (7, 3)
    named = Backbone("MiniLM", partial(mlp_encoder, 5, (6,)), (6,), inputs=None)
    with pytest.raises(ValueError, match="named inputs are not; use experts='mlp'"):
        make_architecture("mmoe", TASKS, named, experts="backbone")


@pytest.mark.parametrize("name, backbone", CASES)
def test_a_gated_architecture_s_gates_are_distributions_over_the_experts_each_weighs(name, backbone):
    """Every registered architecture that reads out its gates: each task's utilisation sums to at most 1 (1 for a
    softmax gate; DSelect-k's selectors may point past the last expert), and its entropy lies within its gate's size."""
    model = build(name, backbone)
    probe = make_probe("expert_gates")
    if not probe.applies_to(model):
        return
    reading = probe(model, batch(backbone))
    total = reading.utilisation.sum("expert")
    assert ((total > 0) & (total <= 1 + 1e-6)).all() and (reading.gate_size >= 1).all()
    assert ((reading.gate_entropy >= -1e-12) & (reading.gate_entropy <= np.log(reading.gate_size) + 1e-9)).all()
    assert set(reading.expert.values) == {e for task in model.task_names for e in model.encoder.expert_names(task)}


EXPERT_COUNTS = ("n_experts", "own_experts", "experts_per_task")
WIDTHS = ("expert_hidden", "widths")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_no_experts_top_k_above_the_experts_and_widths_that_do_not_fit_are_refused_naming_the_architecture(name):
    """Every architecture with experts, a top-k choice or layer widths among its options refuses zero experts, a k above
    its experts and zero or negative widths, with an error that names it and the option."""
    options = ARCHITECTURES[name].options()
    backbone = BACKBONES["MLP"][0]
    if counts := {option: 0 for option in EXPERT_COUNTS if option in options}:
        with pytest.raises(ValueError, match=rf"^{name}\b.*expert"):
            make_architecture(name, TASKS, backbone, **counts)
    if "k" in options and "n_experts" in options:
        with pytest.raises(ValueError, match=rf"^{name}: k\b.*3 experts, got 4"):
            make_architecture(name, TASKS, backbone, **{**SMALL.get(name, {}), "n_experts": 3, "k": 4})
    for option in (o for o in WIDTHS if o in options):
        for widths in ((0,), (4, -1)):
            with pytest.raises(ValueError, match=rf"^{name}\b.*{option}|^{name}\b.*width"):
                make_architecture(name, TASKS, backbone, **{**SMALL.get(name, {}), option: widths})
