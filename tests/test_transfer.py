"""Measured transfer, the loss of a grouping, the report card and the grouping study."""

from functools import partial

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.probes.validation import report_card
from workbench.studies.problems import load_problem
from workbench.studies.grouping import random_groupings, study_task_grouping
from workbench.studies.transfer import grouping_loss, measure_transfer, pairwise_gain
from workbench.probes import pairwise_probes
from workbench.studies.validity import TRUTHS, validity_study

SGD = partial(torch.optim.SGD, lr=0.02, momentum=0.9)


@pytest.fixture(scope="module")
def problem():
    return load_problem("synthetic", seed=0, n_tasks=3, groups=[[0, 1]], n_samples=300, hidden=(16,), validation_fraction=0.2)


@pytest.fixture(scope="module")
def transfer(problem):
    return measure_transfer(problem, 8, seeds=[0, 1], optimizer=SGD, batch_size=32, progress=False)


def test_every_subset_is_trained_for_few_tasks_and_pairs_for_many(problem, transfer):
    assert transfer.subset.values.tolist() == ["t0", "t1", "t2", "t0+t1", "t0+t2", "t1+t2", "t0+t1+t2"]
    assert dict(transfer.loss.sizes) == {"split": 2, "subset": 7, "seed": 2, "task": 3}
    assert bool((transfer.loss.notnull() == transfer.members).all())  # a loss exactly where the task is a member
    pairs = measure_transfer(problem, 2, seeds=[0], subsets="pairs", progress=False)
    assert len(pairs.subset) == 6


def test_a_network_is_reproducible_from_its_seed(problem, transfer):
    again = measure_transfer(problem, 8, seeds=[1], optimizer=SGD, batch_size=32, progress=False)
    xr.testing.assert_equal(again.loss, transfer.loss.sel(seed=[1]))


def test_gain_is_the_relative_loss_change_of_the_target(transfer):
    loss = transfer.loss.sel(split="test", seed=0)
    expected = (loss.sel(subset="t2", task="t2") - loss.sel(subset="t1+t2", task="t2")) / loss.sel(subset="t2", task="t2")
    assert float(transfer.gain.sel(split="test", seed=0, source="t1", target="t2")) == pytest.approx(float(expected))
    assert np.isnan(transfer.gain.sel(source="t0", target="t0")).all()
    xr.testing.assert_equal(pairwise_gain(transfer), transfer.gain)


def test_grouping_loss_serves_each_task_by_its_best_validated_network(transfer):
    served = grouping_loss(transfer, [("t0", "t1"), ("t1", "t2"), ("t0",)])
    for seed in transfer.seed.values:
        for task in ("t0", "t1"):
            options = [s for s in ("t0+t1", "t1+t2", "t0") if task in s.split("+")]
            validation = transfer.loss.sel(split="validation", seed=seed, task=task, subset=options)
            best = options[int(np.argmin(validation.values))]
            assert float(served.sel(seed=seed, task=task)) == float(transfer.loss.sel(split="test", seed=seed, task=task, subset=best))
    assert float(served.sel(seed=0, task="t2")) == float(transfer.loss.sel(split="test", seed=0, task="t2", subset="t1+t2"))


def test_grouping_loss_refuses_unmeasured_groups_and_uncovered_tasks(problem, transfer):
    with pytest.raises(ValueError, match="tasks \\['t2'\\] are in no group"):
        grouping_loss(transfer, [("t0", "t1")])
    pairs = measure_transfer(problem, 2, seeds=[0], subsets="pairs", progress=False)
    with pytest.raises(ValueError, match="were not measured"):
        grouping_loss(pairs, [("t0", "t1", "t2")])


def test_bad_subsets_and_one_task_are_refused(problem):
    with pytest.raises(ValueError, match="subsets must be"):
        measure_transfer(problem, 2, subsets="triples", progress=False)
    single = load_problem("synthetic", seed=0, n_tasks=1, n_samples=100)
    with pytest.raises(ValueError, match="at least two tasks"):
        measure_transfer(single, 2, progress=False)


def _directed(values: np.ndarray) -> xr.DataArray:
    names = [f"t{i}" for i in range(len(values))]
    return xr.DataArray(values, dims=("source", "target"), coords={"source": names, "target": names})


def test_report_card_scores_perfect_reversed_and_constant_predictions():
    truth = _directed(np.random.default_rng(0).normal(size=(4, 4)))
    perfect = report_card(truth * 3 + 1, truth)
    assert float(perfect.spearman_mean) == pytest.approx(1) and float(perfect.pearson_mean) == pytest.approx(1) and float(perfect.top_k_mean) == 1
    reversed_card = report_card(-truth, truth)
    assert float(reversed_card.spearman_mean) == pytest.approx(-1) and float(reversed_card.top_k_mean) == 0
    assert np.isnan(float(report_card(truth * 0, truth).spearman_mean))


def test_report_card_pairs_seeds_and_summarises_them():
    rng = np.random.default_rng(1)
    truth = xr.concat([_directed(rng.normal(size=(4, 4))) for _ in range(3)], dim="seed").assign_coords(seed=[0, 1, 2])
    card = report_card(truth.sel(seed=0, drop=True), truth)
    assert card.spearman.sel(seed=0) == pytest.approx(1)
    assert float(card.spearman_mean) == pytest.approx(float(card.spearman.mean()))
    assert float(card.spearman_std) == pytest.approx(float(card.spearman.std(ddof=1)))


def test_random_groupings_are_partitions_with_k_groups():
    for groups in random_groupings(["a", "b", "c", "d"], 3, count=20, seed=0):
        assert len(groups) == 3 and sorted(t for g in groups for t in g) == ["a", "b", "c", "d"]


def test_grouping_study_payoff_is_relative_to_each_task_alone(problem):
    study = study_task_grouping(problem, 6, [0, 1], optimizer=SGD, probe_every=2, batch_size=32, max_groups=2, random_count=5, progress=False)
    assert set(study.affinities) == {"tag_affinity", "cosine_affinity"}  # every registered affinity probe
    assert set(study.report_cards) == {"tag_affinity", "cosine_affinity", "measured gain, other seeds"}
    np.testing.assert_allclose(study.payoff.relative_loss.sel(grouping="one per task"), 1.0)
    assert "measured losses (Standley), k=2" in study.payoff.grouping.values
    assert study.report_table().shape == (3, 6)


def test_validity_study_scores_every_probe_against_both_truths():
    study = validity_study(count=1, steps=10, every=5, n_samples=200, progress=False)
    readings = [label for label in study.probe.values]
    hard_sharing = [name for name in pairwise_probes() if name != "expert_gates"]  # the study's models have no gates
    assert [label for label in readings if "," not in label] == hard_sharing  # every pairwise probe that applies, with its readings
    assert {"gradient_conflict, early", "gradient_conflict, last layer", "tag_affinity, late"} <= set(readings)
    assert dict(study.spearman.sizes) == {"configuration": 1, "optimizer": 2, "probe": len(readings), "truth": len(TRUTHS)}
    finite = study.spearman.values[np.isfinite(study.spearman.values)]
    assert finite.size > 0 and (np.abs(finite) <= 1).all()
    assert "n_tasks" in study.coords
