"""The method registry against torchjd called directly, save and resume, and the workbench's own methods."""

import copy
import importlib.util
from functools import partial

import numpy as np
import pytest
import torch
from torchjd import aggregation as A
from torchjd import scalarization as S
from torchjd.autojac import jac_to_grad, mtl_backward

from tests.conftest import tiny_batch, tiny_model
from tests.test_method_laws import assert_resumes, synthetic_data, train_tiny
from workbench.probes import ProbeRecorder, gradient_conflict
from workbench.tasks import regression_task
from workbench.train import METHODS, make_method, train

T = 3
# The same methods built straight from torchjd, independently of the registry.
TORCHJD_AGGREGATORS = {
    "upgrad": lambda: A.UPGrad(),
    "mgda": lambda: A.MGDA(),
    "pcgrad": lambda: A.PCGrad(),
    "cagrad": lambda: A.CAGrad(c=0.4),
    "nash_mtl": lambda: A.NashMTL(n_tasks=T),
    "imtl_g": lambda: A.IMTLG(),
    "aligned_mtl": lambda: A.AlignedMTL(),
    "gradvac": lambda: A.GradVac(),
    "graddrop": lambda: A.GradDrop(),
    "dualproj": lambda: A.DualProj(),
    "config": lambda: A.ConFIG(),
    "fairgrad": lambda: A.FairGrad(alpha=1.0),
    "excess_mtl": lambda: A.ExcessMTL(),
    "pcd": lambda: A.PCD(),
    "cr_mogm": lambda: A.GramianWeightedAggregator(A.CRMOGMWeighting(A.MGDAWeighting())),
    "rgw": lambda: A.Random(),
    "jacobian_mean": lambda: A.Mean(),
    "jacobian_sum": lambda: A.Sum(),
}
TORCHJD_SCALARIZERS = {
    "sum": lambda: S.Sum(),
    "ew": lambda: S.Mean(),
    "uw": lambda: S.UW(T),
    "dwa": lambda: S.DWA(),
    "famo": lambda: S.FAMO(T),
    "gls": lambda: S.GeometricMean(),
    "imtl_l": lambda: S.IMTLL(T),
    "stch": lambda: S.STCH(mu=0.1),
    "rlw": lambda: S.Random(),
    "cosmos": lambda: S.COSMOS(1.0, torch.full((T,), 1 / T)),
    "pbi": lambda: S.PBI(5.0, torch.full((T,), 1 / T)),
}


def test_every_torchjd_method_is_registered_or_left_out_for_a_reason():
    registered = {entry.build.rpartition(".")[2] for entry in METHODS.values() if isinstance(entry.build, str)}
    weighted = {n.removesuffix("Weighting") for n in A.__all__ if n.endswith("Weighting") and n != "Weighting"}
    aggregators = {n for n in A.__all__ if not n.endswith("Weighting") and "Aggregator" not in n} | weighted
    left_out = {"Krum", "TrimmedMean", "MoDo", "SDMGrad", "Constant"}  # see the registry's docstring
    assert aggregators - left_out - {"CRMOGM"} <= registered
    assert set(S.__all__) - {"Scalarizer"} <= registered
    assert set(TORCHJD_AGGREGATORS) | set(TORCHJD_SCALARIZERS) | {"constant", "gradnorm", "sam", "rep_mtl"} == set(METHODS)


def _grads(model, extra=()):
    return {name: p.grad.clone() for name, p in [*model.named_parameters(), *extra] if p.grad is not None}


@pytest.mark.parametrize("name", sorted(TORCHJD_AGGREGATORS))
def test_aggregator_equals_torchjd_on_the_same_model(name):
    """Three steps (stateful methods carry their state) against mtl_backward + jac_to_grad."""
    ours_model = tiny_model(T, seed=4)
    theirs_model = copy.deepcopy(ours_model)
    ours, theirs = make_method(name, T), TORCHJD_AGGREGATORS[name]()
    for step in range(3):
        x, targets = tiny_batch(ours_model, n=16, seed=10 + step)
        for model in (ours_model, theirs_model):
            model.zero_grad(set_to_none=True)
        torch.manual_seed(step)
        ours.backward(ours_model, x, targets)
        torch.manual_seed(step)
        z = theirs_model.represent(x)
        losses = theirs_model.losses_from_outputs(theirs_model.heads_forward(z), targets)
        mtl_backward([losses[n] for n in theirs_model.task_names], features=z)
        jac_to_grad([p for _, p in theirs_model.shared_parameters()], theirs)
        expected = _grads(theirs_model)
        got = _grads(ours_model)
        assert set(got) == set(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=f"{name}, step {step}, {key}")


@pytest.mark.parametrize("name", sorted(TORCHJD_SCALARIZERS))
def test_scalarizer_equals_torchjd_on_the_same_model(name):
    ours_model = tiny_model(T, seed=5)
    theirs_model = copy.deepcopy(ours_model)
    ours, theirs = make_method(name, T), TORCHJD_SCALARIZERS[name]()
    for step in range(3):
        x, targets = tiny_batch(ours_model, n=16, seed=20 + step)
        for model in (ours_model, theirs_model):
            model.zero_grad(set_to_none=True)
        torch.manual_seed(step)
        outcome = ours.backward(ours_model, x, targets)
        torch.manual_seed(step)
        losses = theirs_model.losses(x, targets)
        theirs(torch.stack([losses[n] for n in theirs_model.task_names])).backward()
        expected, got = _grads(theirs_model), _grads(ours_model)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=f"{name}, step {step}, {key}")
        assert outcome.weights.shape == (T,)
        if name == "dwa":
            ours.end_epoch()
            theirs.step()


def test_scalarizer_weights_are_the_loss_derivatives():
    model = tiny_model(T)
    x, targets = tiny_batch(model)
    assert make_method("ew", T).backward(model, x, targets).weights.tolist() == pytest.approx([1 / 3] * 3)
    outcome = make_method("gls", T).backward(model, x, targets)
    geometric = outcome.losses.log().mean().exp()
    torch.testing.assert_close(outcome.weights, geometric / (T * outcome.losses))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: make_method("adam", T), ValueError, r"unknown method 'adam'; available: \['aligned_mtl'"),
        (lambda: make_method("cagrad", T, cc=0.5), ValueError, r"method 'cagrad' has no options \['cc'\]; its options: c=0.4, norm_eps=0.0001"),
        (lambda: make_method("pcgrad", T, beta=1), ValueError, "its options: none"),
        (lambda: make_method("constant", T), ValueError, r"method 'constant' needs the options \['weights'\]"),
        (lambda: make_method("sam", T, aggregator="uw"), ValueError, "'uw' is a loss weighting method"),
        (lambda: make_method("sam", T, aggregator="upgrad", aggregator_typo=1), ValueError, "method 'upgrad' has no options"),
        (lambda: make_method("gradnorm", T, alpha=-1), ValueError, "alpha must be non-negative"),
    ],
)
def test_bad_methods_and_options_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_missing_solver_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cvxpy" else real(name, *a))
    with pytest.raises(ImportError, match=r"method 'nash_mtl' needs \['cvxpy'\]: pip install 'workbench\[solvers\]'"):
        make_method("nash_mtl", T)


# The law battery resumes every method with its defaults; these options put state where the defaults keep
# little or none (Nash-MTL reusing its last solution between solves, SAM and Rep-MTL over stateful methods).
STATE_BEHIND_OPTIONS = [("nash_mtl", {"update_weights_every": 2}), ("sam", {"aggregator": "gradvac"}), ("rep_mtl", {"base": "famo"}), ("rep_mtl", {"base": "gradvac"})]


@pytest.mark.parametrize("name, options", STATE_BEHIND_OPTIONS)
def test_a_resumed_run_continues_with_the_same_numbers(name, options, tmp_path):
    assert_resumes(name, options, tmp_path)


def test_resuming_refuses_another_runs_checkpoint(tmp_path):
    path = tmp_path / "run.safetensors"
    train_tiny("uw", 4, checkpoint=path)
    with pytest.raises(ValueError, match=r"saved by another run.*'method'"):
        train_tiny("dwa", 8, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs the checkpoint"):
        train_tiny("uw", 8, resume=True)


def test_a_recorder_on_the_training_batch_reuses_the_steps_jacobian(monkeypatch):
    from workbench.probes import conflict

    calls = []
    real = conflict.model_task_jacobian
    monkeypatch.setattr(conflict, "model_task_jacobian", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = ProbeRecorder(gradient_conflict, every=2)
    train_tiny("upgrad", 6, recorders=[reused])
    assert calls == [] and reused.history.sizes["step"] == 3
    own = ProbeRecorder(gradient_conflict, every=2)
    train_tiny("uw", 6, recorders=[own])  # a loss-weighting step computes no Jacobian: the probe does
    assert len(calls) == 3
    recomputed = ProbeRecorder(gradient_conflict, every=2, strategy="loop")
    monkeypatch.setattr(ProbeRecorder, "reuses_jacobian", False, raising=False)
    train_tiny("upgrad", 6, recorders=[recomputed])
    np.testing.assert_allclose(reused.history.cosine.values, recomputed.history.cosine.values, atol=1e-6)


def test_gradnorm_weights_stay_positive_sum_to_t_and_favour_the_lagging_task():
    data = synthetic_data()
    data.targets["t2"] = data.targets["t2"] * 5  # a task whose loss starts high and falls slowly
    torch.manual_seed(0)
    result = train(tiny_model(T, seed=7), data, 60, method="gradnorm", batch_size=8, progress=False)
    weights = result.history.weights.values
    assert np.all(weights > 0) and np.allclose(weights[1:].sum(1), T, atol=1e-5)
    assert weights[0].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"no shared parameter 'nope'"):
        make_method("gradnorm", T, layer="nope").backward(tiny_model(T), *tiny_batch(tiny_model(T)))


def test_sam_with_a_tiny_radius_is_its_aggregator_and_with_a_radius_moves_uphill_first():
    model = tiny_model(T, seed=3)
    x, targets = tiny_batch(model, n=16)
    reference = copy.deepcopy(model)
    make_method("sam", T, rho=1e-7, aggregator="upgrad").backward(model, x, targets)
    make_method("upgrad", T).backward(reference, x, targets)
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
    # with a quadratic loss the sharpness-aware gradient is the gradient at θ + ρ g/‖g‖ exactly
    from workbench.tasks import MultiTaskModel

    encoder = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[3.0, -4.0]]))
    quadratic = MultiTaskModel(encoder, [regression_task("a")], heads={"a": torch.nn.Identity()})
    xq, yq = torch.tensor([[1.0, 0.0]]), {"a": torch.tensor([0.0])}
    make_method("sam", 1, rho=0.5).backward(quadratic, xq, yq)
    gradient = torch.tensor([[6.0, 0.0]])  # d(w·x)²/dw at w = (3, -4)
    moved = torch.tensor([[3.0, -4.0]]) + 0.5 * gradient / gradient.norm()
    torch.testing.assert_close(encoder.weight.grad, 2 * (moved @ xq.T) * xq)
    torch.testing.assert_close(encoder.weight, torch.tensor([[3.0, -4.0]]), msg="the perturbation is undone")


def test_any_method_trains_a_model_on_a_device(tmp_path):
    result = train_tiny("cagrad", 4, device="cpu", checkpoint=tmp_path / "c.safetensors")
    assert result.history.attrs["method"] == {"name": "cagrad", "c": 0.4, "norm_eps": 0.0001}
    assert (tmp_path / "c.safetensors").exists()
    sgd = train_tiny("mgda", 4, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert sgd.history.attrs["optimizer"] == "SGD"
