"""The laws every registered training method obeys, run over the whole registry: a method is tested the moment it
is registered. (test_methods.py checks the wrapped ones against torchjd and the workbench's own against their
definitions.)"""

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from workbench.data import TaskDatasets, make_synthetic
from workbench.registry import REQUIRED
from workbench.tasks import MultiTaskData, MultiTaskModel, regression_task
from workbench.train import METHODS, make_method, train

T = 3
# Values for the options a method has no default for; the battery refuses a method that needs one it lacks here.
REQUIRED_VALUES = {"constant": {"weights": [0.2, 0.3, 0.5]}}


def _options(name: str) -> dict:
    given = REQUIRED_VALUES.get(name, {})
    missing = [k for k, v in METHODS[name].options().items() if v is REQUIRED and k not in given]
    assert not missing, f"method {name!r} needs {missing}: give the law battery a value in REQUIRED_VALUES"
    return given


def _convex_problem(seed: int = 0) -> tuple[MultiTaskModel, MultiTaskData]:
    """L_t(W) = mean (a_tᵀ W x − y_t)²: convex in the shared W, the heads a_t fixed; the targets share the minimiser W*."""
    g = torch.Generator().manual_seed(seed)
    features, width = 4, 6
    encoder = nn.Linear(features, width, bias=False)
    heads = {}
    for t in range(T):
        head = nn.Linear(width, 1, bias=False)
        head.weight.data = torch.randn(1, width, generator=g)
        heads[f"t{t}"] = head.requires_grad_(False)
    encoder.weight.data = torch.randn(width, features, generator=g)
    model = MultiTaskModel(encoder, [regression_task(f"t{t}") for t in range(T)], heads=heads)
    optimum = torch.randn(width, features, generator=g)
    x = torch.randn(64, features, generator=g)
    targets = {name: (x @ optimum.T @ head.weight.T)[:, 0] for name, head in heads.items()}
    return model, MultiTaskData(x, targets, list(model.tasks.values()))


# Rep-MTL's saliency shares are scale-free, so their gradient grows as 1/|∂L/∂Z| while the task losses fall: at a step of
# 0.01 the summed loss fell from 107 to 14 in 30 steps, then jumped to 10^4 (seen on one machine, not on another); at
# 0.005 it falls steadily over the 40 steps.
STEP = {"rep_mtl": 0.005}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_update_is_finite_and_descends_on_a_convex_problem(name):
    model, data = _convex_problem()
    initial = sum(model.losses(data.x, data.targets).values()).item()
    torch.manual_seed(0)
    lr = STEP.get(name, 0.01)
    run = train(model, data, 40, method=make_method(name, T, **_options(name)), batch_size=64, optimizer=lambda p: torch.optim.SGD(p, lr=lr), progress=False)
    assert np.isfinite(run.history.train_loss.values).all()
    weights = run.history.weights.values
    assert np.isnan(weights).all() or np.isfinite(weights).all(), "a method reports weights at every step or at none"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    final = sum(model.losses(data.x, data.targets).values()).item()
    assert final < 0.95 * initial, f"{name}: the summed loss went from {initial:.3f} to {final:.3f}"


def synthetic_data() -> MultiTaskData:
    return make_synthetic(n_tasks=T, n_samples=48, n_features=5, groups=[[0, 1]], seed=2).data


def train_tiny(method, steps, data=None, **kwargs):
    """``steps`` steps of ``method`` on a tiny MLP and synthetic tasks (or ``data``), seeded."""
    torch.manual_seed(0)
    data = synthetic_data() if data is None else data
    return train(tiny_model(T, seed=7), data, steps, method=method, batch_size=16, seed=1, progress=False, eval_every=4, **kwargs)


def masked_synthetic_data(poison: bool = False) -> MultiTaskData:
    """The synthetic tasks with ``t2`` labelled on 4 of 48 samples (in batches of 16, many steps lack it) and ``t0`` on
    half; with ``poison``, the targets of the unlabelled samples are NaN (a method must never read them)."""
    data = synthetic_data()
    masks = {"t0": torch.arange(48) % 2 == 0, "t2": torch.arange(48) % 12 == 0}
    targets = {name: y.masked_fill(~masks[name], torch.nan) if poison and name in masks else y for name, y in data.targets.items()}
    return MultiTaskData(data.x, targets, data.tasks, masks=masks)


def assert_resumes(name: str, options: dict, tmp_path, data=None) -> None:
    """Ten steps at once, or five, a checkpoint, and five more from it, give the same numbers (the state travels)."""
    given = {} if data is None else {"data": data}
    unbroken = train_tiny(make_method(name, T, **options), 10, **given)
    path = tmp_path / "run.safetensors"
    train_tiny(make_method(name, T, **options), 5, checkpoint=path, **given)
    torch.manual_seed(123)  # the resumed run must not depend on the state of the process
    resumed = train_tiny(make_method(name, T, **options), 10, checkpoint=path, resume=True, **given)
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(resumed.history[variable].values, unbroken.history[variable].values, err_msg=f"{name}: {variable}")
    for (key, a), (_, b) in zip(resumed.model.state_dict().items(), unbroken.model.state_dict().items()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", list(METHODS))
def test_a_resumed_run_continues_with_the_same_numbers(name, tmp_path):
    assert_resumes(name, _options(name), tmp_path)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_resumed_run_with_missing_labels_continues_with_the_same_numbers(name, tmp_path):
    """The instances that trained batches labelled for some tasks only keep their state across the checkpoint too."""
    assert_resumes(name, _options(name), tmp_path, masked_synthetic_data())


@pytest.mark.parametrize("name", list(METHODS))
def test_a_task_without_labels_in_a_batch_contributes_nothing_and_unlabelled_targets_are_never_read(name):
    clean = train_tiny(make_method(name, T, **_options(name)), 9, masked_synthetic_data())
    poisoned = train_tiny(make_method(name, T, **_options(name)), 9, masked_synthetic_data(poison=True))
    for variable in ("train_loss", "weights", "loss", "metric"):
        np.testing.assert_array_equal(poisoned.history[variable].values, clean.history[variable].values, err_msg=f"{name}: {variable}")
    losses, weights = clean.history.train_loss.values, clean.history.weights.values
    missing = np.isnan(losses[:, 2])
    assert missing.any() and not missing.all() and np.isfinite(losses[:, :2]).all()
    assert np.isnan(weights).all() or (np.isnan(weights[missing, 2]).all() and np.isfinite(weights[~missing]).all())
    assert all(torch.isfinite(p).all() for p in clean.model.parameters())


def one_dataset_per_task(mixing: str) -> TaskDatasets:
    """Each synthetic task on its own samples (16, 24 and 40 of them), combined by their sizes."""
    data = make_synthetic(n_tasks=T, n_samples=80, n_features=5, groups=[[0, 1]], seed=2).data
    bounds = [0, 16, 40, 80]
    members = {name: data.rows(torch.arange(bounds[i], bounds[i + 1])).subset([name]) for i, name in enumerate(data.task_names)}
    return TaskDatasets(members, mixing=mixing)


@pytest.mark.parametrize("mixing", ["per_task", "mixed"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_on_one_dataset_per_task(name, mixing):
    data = one_dataset_per_task(mixing)
    run = train_tiny(make_method(name, T, **_options(name)), 8, data)
    drawn = np.array([[len(index) > 0 for index in data.step_indices(step, 16, seed=1).values()] for step in range(8)])
    assert mixing == "mixed" or drawn.all(), "a batch per task draws every task"
    np.testing.assert_array_equal(np.isfinite(run.history.train_loss.values), drawn, err_msg=f"{name}: a loss where the task was drawn, NaN where not")
    assert np.isfinite(run.history.loss.values).all() and all(torch.isfinite(p).all() for p in run.model.parameters())


@pytest.mark.parametrize("name", list(METHODS))
def test_an_unknown_option_is_refused_naming_the_method_and_its_options(name):
    with pytest.raises(ValueError, match="has no options \\['no_such_option'\\]"):
        make_method(name, T, **_options(name), no_such_option=1)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_entry_states_its_family_cost_paper_and_options(name):
    entry = METHODS[name]
    assert entry.family in {"loss weighting", "gradient aggregation", "workbench"} and entry.summary and entry.paper
    assert entry.traits["cost"] in {"losses", "jacobian", "solver", "passes"}
    assert isinstance(entry.holds_state, bool)
    assert make_method(name, T, **_options(name)).describe()["name"] == name
