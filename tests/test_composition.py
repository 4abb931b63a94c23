"""LoraHub's leave-one-task-out study on the lexicon tasks: its compositions, its search's guarantees, its refusals."""

from functools import partial

import numpy as np
import pytest
import torch

from workbench.studies import load_problem
from workbench.studies.composition import COMPOSITIONS, LORAHUB_CLAIMS, check_lorahub_claims, lorahub_study

TRAINING = dict(batch_size=16, optimizer=partial(torch.optim.Adam, lr=5e-2))


@pytest.fixture(scope="module")
def study():
    problem = load_problem("lexicon", seed=0, tasks=["vader_mean", "vader_spread", "afinn"], trainable_layers=1, max_words=60)
    return lorahub_study(problem, seeds=[0, 1], steps=3, shots=10, budget=8, **TRAINING)


def test_every_task_is_left_out_under_every_seed_and_lorahub_weighs_only_the_others(study):
    assert study.metric.dims == ("seed", "task", "composition") and list(study.composition.values) == list(COMPOSITIONS)
    assert np.isfinite(study.metric.values).all() and np.isfinite(study.few_shot_loss.values).all()
    weights = study.weights.values
    for t in range(study.sizes["task"]):
        assert np.isnan(weights[:, t, t]).all()  # a task's own LoRA is never a source of its composition
    assert np.isfinite(weights[~np.isnan(weights)]).all() and (np.abs(weights[~np.isnan(weights)]) <= 1.5).all()
    assert study.attrs["shots"] == 10 and study.attrs["source_steps"] == 3 and (study.higher_is_better == 0).all()


def test_the_search_never_ends_worse_on_its_examples_than_the_model_without_lora_or_any_single_lora(study):
    loss, l1 = study.few_shot_loss, study.attrs["l1"]
    sources = study.sizes["task"] - 1
    found = loss.sel(composition="lorahub") + l1 * np.abs(study.weights).sum("source") / sources  # LoraHub's objective at its weights
    assert (found <= loss.sel(composition="base") + 1e-9).all()
    assert (found <= loss.sel(composition="retrieval") + l1 / sources + 1e-9).all()
    assert (loss.sel(composition="base") != loss.sel(composition="own")).all()  # the sources were trained: their LoRAs act


def test_the_claims_table_pairs_seeds_and_tasks_and_gives_a_verdict_for_each_claim(study):
    table = check_lorahub_claims(study)
    assert list(table.index) == [f"{better} beats {worse}" for better, worse, _ in LORAHUB_CLAIMS]
    expected = (study.metric.sel(composition="lorahub") - study.metric.sel(composition="base")).mean()  # mse: lower is better
    assert table.loc["lorahub beats base", "mean difference"] == pytest.approx(float(expected))
    assert table.verdict.str.match(r"^(holds|does not hold|reversed)").all()


def test_the_study_refuses_what_it_cannot_leave_out():
    two = load_problem("lexicon", seed=0, tasks=["vader_mean", "afinn"], trainable_layers=1, max_words=30)
    with pytest.raises(ValueError, match="three tasks or more"):
        lorahub_study(two, steps=1)
    three = load_problem("lexicon", seed=0, tasks=["vader_mean", "vader_spread", "afinn"], trainable_layers=1, max_words=30)
    with pytest.raises(ValueError, match="shots must be a number of examples of at least 2, got 1"):
        lorahub_study(three, steps=1, shots=1)
    per_task = load_problem("lexicon", seed=0, data="per_task", tasks=["vader_mean", "vader_spread", "afinn"], trainable_layers=1, max_words=30)
    with pytest.raises(ValueError, match="data='shared'"):
        lorahub_study(per_task, steps=1)
