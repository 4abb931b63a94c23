"""Methods compared over seeds: the layout, agreement with the loop run by hand, and the claims' verdicts."""

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.studies.problems import load_problem
from workbench.train import single_task_baselines, train
from workbench.studies.methods import compare_methods, method_summary
from workbench.studies.claims import check_claims


@pytest.fixture(scope="module")
def problem():
    return load_problem("synthetic", seed=1, n_tasks=3, n_samples=200, n_features=5, hidden=(8,), classification=[2])


@pytest.fixture(scope="module")
def comparison(problem):
    return compare_methods(problem, {"ew": {}, "cagrad": {"c": 0.2}, "mgda": {}}, seeds=[0, 1], steps=12, batch_size=16, conflict_every=4, progress=False)


def test_layout(comparison):
    assert comparison.metric.dims == ("method", "seed", "split", "task")
    assert comparison.method.values.tolist() == ["ew", "cagrad", "mgda"] and comparison.split.values.tolist() == ["validation", "test"]
    assert comparison.delta_m.dims == ("method", "seed", "split") and comparison.conflict.dims == ("method", "seed", "task", "other_task")
    assert comparison.attrs["methods"]["cagrad"] == {"name": "cagrad", "c": 0.2}
    assert (comparison.seconds_per_step > 0).all() and np.isfinite(comparison.curve).all()
    conflict = comparison.conflict.values
    assert np.all((conflict >= 0) & (conflict <= 1) | np.isnan(conflict))


def test_the_same_numbers_as_training_by_hand(problem, comparison):
    splits = problem.splits
    torch.manual_seed(1)
    run = train(problem.make_model(splits.tasks), splits.train, 12, method="ew", eval_data=splits.validation, batch_size=16, seed=1, progress=False)
    scores = run.model.evaluate(splits.test.x, splits.test.targets)
    np.testing.assert_allclose(comparison.metric.sel({"method": "ew", "seed": 1, "split": "test"}).values, [scores[t][1] for t in splits.task_names])
    baselines = single_task_baselines(problem.make_model, splits.train, 12, eval_data=splits.validation, batch_size=16, seed=1, progress=False)
    np.testing.assert_allclose(comparison.single_task.sel(seed=1, split="validation").values, baselines.metric.values)


def test_delta_m_and_summary(comparison):
    chosen = comparison.sel(split="test")
    sign = np.where(chosen.higher_is_better, -1, 1)
    expected = (sign * (chosen.metric - chosen.single_task) / chosen.single_task).mean("task") * 100
    np.testing.assert_allclose(chosen.delta_m, expected)
    table = method_summary(comparison, unit="ew")
    assert list(table.delta_m_mean) == sorted(table.delta_m_mean) and table.loc["ew", "steps_of_ew"] == 1


def _fake(deltas: dict[str, list[float]], seconds: dict[str, float]) -> xr.Dataset:
    methods = list(deltas)
    seeds = range(len(next(iter(deltas.values()))))
    return xr.Dataset(
        {
            "delta_m": (("method", "seed", "split"), np.array([[[v, v] for v in deltas[m]] for m in methods])),
            "seconds_per_step": (("method", "seed"), np.array([[seconds[m]] * len(seeds) for m in methods])),
        },
        coords={"method": methods, "seed": list(seeds), "split": ["validation", "test"]},
    )


def test_claims_get_honest_verdicts():
    fake = _fake(
        {"ew": [1.0, 1.2, 0.8, 1.0], "famo": [-2.0, -2.1, -1.9, -2.0], "nash_mtl": [1.5, 0.6, 1.4, 0.7], "mgda": [3.0, 3.1, 2.9, 3.0]},
        {"ew": 0.01, "famo": 0.011, "nash_mtl": 0.2, "mgda": 0.05},
    )
    verdicts = check_claims(fake).verdict
    assert verdicts["famo beats ew (published Δm% -4.10 vs +5.59)"] == "holds, clearly"
    assert verdicts["nash_mtl beats ew (published Δm% -4.04 vs +5.59)"] == "does not hold, within the noise"
    assert verdicts["mgda beats ew (published Δm% +1.38 vs +5.59)"] == "reversed, clearly"
    assert verdicts["famo costs 1.08× ew per step"] == "same order" and verdicts["nash_mtl costs 6.11× ew per step"] == "differs"
    ordering = check_claims(fake).loc[[c for c in check_claims(fake).index if c.startswith("the published ordering")][0]]
    assert ordering.measured.startswith("Spearman ρ =")


def test_a_comparison_without_a_published_claim_gets_an_empty_table():
    table = check_claims(_fake({"ew": [1.0, 1.1], "gradnorm": [0.5, 0.4]}, {"ew": 0.01, "gradnorm": 0.012}))
    assert table.empty and list(table.columns) == ["measured", "mean difference", "verdict"] and table.index.name == "claim"
