"""The laws every registered parameter-efficient scheme obeys, on an MLP and on a tiny BERT whose top two blocks are
adapted: the backbone stays frozen, the model contract holds, the gradient engine agrees with autograd, every probe
runs (or is refused by name), a loss weighting and a gradient method train it, a scheme that starts as a no-op
starts as the frozen backbone, and bad ranks and targets are refused naming what exists. A new scheme is tested
the moment it is registered."""

import copy
import re
from functools import partial

import numpy as np
import pytest
import torch

from tests.test_architecture_laws import SHAPES, TASKS, shaped_batch
from tests.test_encoders import tiny_bert, token_batch
from workbench.gradients import model_task_jacobian
from workbench.models import Backbone, TransformerEncoder, mlp_encoder
from workbench.models import SCHEMES, make_scheme
from workbench.probes import PROBES, make_probe, task_matrix
from workbench.tasks import MultiTaskData
from workbench.train import loop, train

def eager_bert():
    """The tiny BERT with matmul-and-softmax attention, whose batched backward the gradient engine vmaps (see
    :meth:`~workbench.models.TransformerEncoder.from_pretrained`)."""
    bert = tiny_bert()
    bert.set_attn_implementation("eager")
    return TransformerEncoder(bert, "mean", trainable_layers=2)


BACKBONES = {
    "MLP": Backbone("MLP", partial(mlp_encoder, 5, (8, 6)), (6,), inputs=(5,)),
    "BERT": Backbone("BERT", eager_bert, (12,), layers="tensor"),
}
WIDE = Backbone("MLP", partial(mlp_encoder, 16, (32, 32)), (32,), inputs=(16,))
CASES = [(name, backbone) for name in SCHEMES for backbone in BACKBONES]
SMALL = {"lora": {"rank": 2}, "task_lora": {"rank": 2}, "align_lora": {"rank": 2}, "mtl_lora": {"rank": 2, "up_projections": 2}, "multilora": {"rank": 2, "n_modules": 2},
         "molora": {"experts": 3, "expert_rank": 2, "k": 2}, "smora": {"rank": 4, "k": 2},
         "adapter": {"reduction": 2}, "task_adapter": {"reduction": 2}, "hyperformer": {"reduction": 2, "task_embedding": 3, "layer_embedding": 2},
         "adapter_fusion": {"reduction": 2, "dropout": 0.0}, "scalearn": {"reduction": 2, "dropout": 0.0}}  # two forwards compared: no dropout
# The options under which a scheme starts as a no-op (its output the frozen backbone's); absent: it does not.
IDENTITY_START = {"lora": {}, "task_lora": {}, "align_lora": {}, "mtl_lora": {}, "multilora": {}, "molora": {}, "smora": {}, "adapter": {"init": "zero"}, "task_adapter": {"init": "zero"}}


# The schemes whose models add a loss of their own to the tasks' (the training loop's auxiliary losses).
AUXILIARY_LOSSES = {"align_lora", "adapter_fusion"}


def build(name: str, backbone: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_scheme(name, TASKS, BACKBONES[backbone], **{**SMALL.get(name, {}), **options})


def inputs(backbone: str, n: int = 7, seed: int = 1):
    if backbone == "BERT":
        ids = token_batch(n=n, seed=seed)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))


def batch(backbone: str, n: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed + 100)
    return inputs(backbone, n, seed), {"a": torch.randn(n, generator=g), "b": torch.randn(n, generator=g), "c": torch.randint(0, 3, (n,), generator=g)}


def perturbed(model, seed: int = 5):
    """The model with every trainable parameter moved off its start (a zero-initialised up-projection hides gradients)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_every_scheme_has_its_small_options_and_its_start_stated():
    assert set(SMALL) == set(SCHEMES) and set(IDENTITY_START) <= set(SCHEMES)


@pytest.mark.parametrize("name, backbone", CASES)
def test_the_backbone_is_frozen_and_the_model_contract_holds(name, backbone):
    model = build(name, backbone)
    x, _ = batch(backbone)
    outputs = model(x)
    assert [tuple(o.shape) for o in outputs.values()] == [(7, t.out_features) for t in TASKS]
    base = dict(model.encoder.base.named_parameters())
    adapter_names = {f"{layer}.{name}" for layer, module in model.encoder.adapted_layers().items() for name, _ in module.named_parameters()
                     if not name.startswith("base_layer.")}
    if SCHEMES[name].traits.get("composes"):  # the adapters it composes are trained before, and stay frozen
        frozen_sources = {n for n in adapter_names if ".adapter_down." in n or ".adapter_up." in n}
        assert frozen_sources and not any(p.requires_grad for n, p in base.items() if f"base.{n}" in frozen_sources)
        adapter_names -= frozen_sources
    trainable = {f"{n}" for n, p in base.items() if p.requires_grad}
    assert trainable == {n.removeprefix("base.") for n in adapter_names}, "only the scheme's parameters train in the backbone"
    shared = {id(p) for _, p in model.shared_parameters()}
    own = {task: {id(p) for _, p in params} for task, params in model.task_parameters().items()}
    for task, params in own.items():
        assert params and not params & shared
        assert not any(params & other for other_task, other in own.items() if other_task != task)
    assert shared | set().union(*own.values()) == {id(p) for p in model.parameters() if p.requires_grad}
    make_scheme(name, TASKS, WIDE)  # the defaults build too, where the layers are wide enough for them


@pytest.mark.parametrize("name, backbone", [(n, b) for n, b in CASES if n in IDENTITY_START])
def test_a_scheme_that_starts_as_a_no_op_starts_as_the_frozen_backbone(name, backbone):
    model = build(name, backbone, **IDENTITY_START[name])
    torch.manual_seed(0)
    frozen = BACKBONES[backbone].make().eval()
    model.eval()
    x, _ = batch(backbone)
    z = model.represent(x)
    expected = frozen(x)
    if model.encoder.per_task:
        expected = expected.unsqueeze(1).expand_as(z)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, backbone", CASES)
def test_a_tasks_own_parameters_get_no_gradient_from_the_other_tasks(name, backbone):
    model = perturbed(build(name, backbone))
    losses = model.losses(*batch(backbone))
    for task, params in model.task_parameters().items():
        for other in model.task_names:
            if other != task:
                grads = torch.autograd.grad(losses[other], [p for _, p in params], retain_graph=True, allow_unused=True)
                assert all(g is None or not g.any() for g in grads), f"{other}'s loss reaches {task}'s parameters"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name, backbone", CASES)
def test_the_gradient_engine_equals_autograd_inside_the_adapter(name, backbone, shape):
    model = perturbed(build(name, backbone))
    x, targets = shaped_batch(shape, backbone, batch)
    jacobian = model_task_jacobian(model, x, targets, task_grads=True, strategy="batched")
    losses = model.losses(x, targets)
    shared = model.shared_parameters()
    assert all(".base_layer." not in parameter for parameter in jacobian.blocks), "the frozen weights are no shared parameters"
    for index, task in enumerate(model.task_names):
        if task not in losses:
            assert torch.isnan(jacobian.losses[index])
            continue
        if shared:
            expected = torch.autograd.grad(losses[task], [p for _, p in shared], retain_graph=True, allow_unused=True, materialize_grads=True)
            for (parameter, _), want in zip(shared, expected):
                # float32 sums in another order: to 1e-6 of the gradient's largest entry (the hypernetwork's reach 400)
                torch.testing.assert_close(jacobian.blocks[parameter][index], want, rtol=1e-5, atol=1e-6 * float(want.abs().max()) + 1e-6,
                                           msg=f"{task}, {parameter}")
        own = model.task_parameters()[task]
        for (parameter, _), want in zip(own, torch.autograd.grad(losses[task], [p for _, p in own], retain_graph=True, allow_unused=True,
                                                                  materialize_grads=True)):
            torch.testing.assert_close(jacobian.task_grads[parameter], want, msg=f"{task}, {parameter}")


@pytest.mark.parametrize("name, backbone", CASES)
def test_every_registered_probe_runs_on_it_or_is_refused_by_name(name, backbone):
    model = perturbed(build(name, backbone))
    x, targets = batch(backbone)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for probe_name in PROBES:
        probe = make_probe(probe_name)
        if not probe.applies_to(model):
            needs = PROBES[probe_name].traits["needs"]
            message = {"gates": "reads the gates of a gated architecture", "shared": "this model shares none"}[needs]
            with pytest.raises(ValueError, match=message):
                probe(model, (x, targets), **({"optimizer": optimizer} if probe.takes("optimizer") else {}))
            continue
        result = probe(model, (x, targets), **({"optimizer": optimizer} if probe.takes("optimizer") else {}))
        if PROBES[probe_name].traits["pairwise"]:
            matrix = task_matrix(result)
            assert matrix.shape == (3, 3) and np.isfinite(matrix.values).all()
    assert make_probe("gradient_conflict").applies_to(model) == bool(model.shared_parameters())


@pytest.mark.parametrize("name, backbone", CASES)
@pytest.mark.parametrize("method, labels", [("ew", "all"), ("upgrad", "missing")])
def test_it_trains_with_a_loss_weighting_and_a_gradient_method_and_only_its_parameters_move(name, backbone, method, labels):
    model = build(name, backbone)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x, targets = batch(backbone, n=32)
    data = MultiTaskData(x, targets, TASKS)
    data = data if labels == "all" else data.without_labels(0.7, seed=1)
    run = train(model, data, 4, method=method, batch_size=16, progress=False)
    assert np.isfinite(run.history.train_loss.values).all()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("name, backbone", CASES)
def test_its_own_losses_add_their_gradient_to_every_methods_update(name, backbone, monkeypatch):
    """One SGD step of unit rate with the model's auxiliary losses, minus one without them, is minus their gradient at the start."""
    x, targets = batch(backbone, n=16)
    data = MultiTaskData(x, targets, TASKS).without_labels(0.4, seed=2)  # the tasks labelled on different samples
    model = perturbed(build(name, backbone))
    hooks = loop._module_hooks(model, "auxiliary_loss")
    assert bool(hooks) == (name in AUXILIARY_LOSSES)
    if not hooks:
        return
    first_x, first_targets = data.batch(0, 16)
    start = copy.deepcopy(model)
    auxiliary = sum(loss for hook in loop._module_hooks(start, "auxiliary_loss") if (loss := hook(first_x, first_targets)) is not None)
    trainable = [(n, p) for n, p in start.named_parameters() if p.requires_grad]
    gradients = dict(zip([n for n, _ in trainable], torch.autograd.grad(auxiliary, [p for _, p in trainable], allow_unused=True, materialize_grads=True)))
    assert any(g.abs().sum() > 0 for g in gradients.values()), "the auxiliary loss reaches a trainable parameter"
    sgd = partial(torch.optim.SGD, lr=1.0)
    without = copy.deepcopy(model)
    train(model, data, 1, method="upgrad", batch_size=16, optimizer=sgd, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_auxiliary_backward", lambda *args: None)
        train(without, data, 1, method="upgrad", batch_size=16, optimizer=sgd, progress=False)
    moved, reference = dict(model.named_parameters()), dict(without.named_parameters())
    for parameter, gradient in gradients.items():
        torch.testing.assert_close(moved[parameter] - reference[parameter], -gradient, atol=1e-5, rtol=1e-4, msg=parameter)


@pytest.mark.parametrize("name", [n for n in SCHEMES if n.startswith("task_") or SCHEMES[n].traits.get("composes")])
def test_a_scheme_that_shares_nothing_trains_alike_under_every_method(name):
    """Nothing shared, nothing to aggregate: each task's own parameters get its own gradient under every method."""
    x, targets = batch("MLP", n=32)
    losses = {}
    for method in ("upgrad", "pcgrad", "mgda"):
        model = build(name, "MLP")
        losses[method] = train(model, MultiTaskData(x, targets, TASKS), 3, method=method, batch_size=16, progress=False).history.train_loss.values
    assert model.shared_parameters() == []
    np.testing.assert_array_equal(losses["upgrad"], losses["pcgrad"])
    np.testing.assert_array_equal(losses["upgrad"], losses["mgda"])


@pytest.mark.parametrize("name", list(SCHEMES))
def test_bad_ranks_widths_targets_and_options_are_refused_naming_what_exists(name):
    entry = SCHEMES[name]
    assert entry.summary and entry.paper and entry.family
    with pytest.raises(ValueError, match=f"parameter-efficient scheme {name!r} has no options \\['no_such_option'\\]"):
        make_scheme(name, TASKS, BACKBONES["MLP"], no_such_option=1)
    with pytest.raises(ValueError, match=rf"{name}: the targets \['nothing_here'\] match no linear layer of the 2 trainable blocks; "
                                         r"its linear layers: \['encoder\.layer\.1\.attention\.output\.dense'"):
        make_scheme(name, TASKS, BACKBONES["BERT"], targets=["nothing_here"])
    with pytest.raises(ValueError, match=rf"{name}: the targets 'zzz\.\*' match no linear layer of the encoder; its linear layers: \['0', '2'\]"):
        make_scheme(name, TASKS, BACKBONES["MLP"], targets="zzz.*")
    options = entry.options()
    if "rank" in options:
        for rank in (0, 7, 2.0):
            with pytest.raises(ValueError, match=rf"{name}: rank must be an int from 1 to the layer's width, 5 for '0' \(5 -> 8\), got {re.escape(repr(rank))}"):
                make_scheme(name, TASKS, BACKBONES["MLP"], rank=rank)
    if "reduction" in options:
        with pytest.raises(ValueError, match=rf"{name}: reduction 9 leaves no unit of '0''s 8 outputs"):
            make_scheme(name, TASKS, BACKBONES["MLP"], reduction=9)
        with pytest.raises(ValueError, match=rf"{name}: reduction must be a positive int, got 0"):
            make_scheme(name, TASKS, BACKBONES["MLP"], reduction=0)
    if "dropout" in options:
        with pytest.raises(ValueError, match=rf"{name}: dropout must be a probability in \[0, 1\), got 1.0"):
            make_scheme(name, TASKS, BACKBONES["MLP"], dropout=1.0)


@pytest.mark.parametrize("name, backbone", CASES)
def test_a_summed_step_is_the_training_loops_step_with_the_sum_method(name, backbone):
    """What the timings and the memory of a scheme's step measure is one step of training: its auxiliary losses and after-step hooks included."""
    x, targets = batch(backbone, n=16)
    data = MultiTaskData(x, targets, TASKS).without_labels(0.4, seed=2)  # the tasks labelled on different samples: Align-LoRA's term acts
    model = perturbed(build(name, backbone))
    stepped, before = copy.deepcopy(model), {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd = partial(torch.optim.SGD, lr=0.5)
    train(model, data, 1, method="sum", batch_size=16, optimizer=sgd, progress=False)
    stepped.train()
    loop.summed_step(stepped, sgd([p for p in stepped.parameters() if p.requires_grad]), *data.batch(0, 16))
    trained, reference = dict(model.named_parameters()), dict(stepped.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in trained.items() if p.requires_grad)  # the step moved the scheme
    for parameter, value in trained.items():
        torch.testing.assert_close(reference[parameter], value, atol=1e-6, rtol=1e-5, msg=parameter)
    for buffer, value in model.named_buffers():
        torch.testing.assert_close(dict(stepped.named_buffers())[buffer], value, atol=1e-6, rtol=1e-5, msg=buffer)
