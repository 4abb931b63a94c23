"""MultiDigits: a MultiMNIST-style problem built from the 8 × 8 digits bundled with scikit-learn.

Two digit images are placed on one canvas, the left one near the top-left corner and the right one
near the top-right, each shifted at random, so that they overlap by up to ``2 · max_shift`` columns
(overlapping pixels take the brighter value, as in MultiMNIST). The tasks read the pair of digits:

- ``left``, ``right``: the left and the right digit (10 classes each);
- ``parity``: whether the sum of the two digits is odd (binary);
- ``greater``: whether the left digit is larger than the right (binary);
- ``sum``: the sum of the two digits as a regression target, standardised with the training split's
  mean and standard deviation (kept in the attrs).

The 1,797 source images are split into train / validation / test pools first (stratified by digit,
seeded), and each split composes its pairs from its own pool only: no source image of the test or
validation split appears in training. The reference relationship is the normalised mutual
information between the tasks' labels over all samples (0: independent labels, as left and right;
1: one label determines the other).

Two variants: ``labels_removed`` leaves each task labelled on part of the training samples only, and
:func:`multidigits_image_folder` reads the canvases from PNG files on disk, as a user's image folder.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from workbench.data.image_folder import ImageFolder, image_folder_data, write_image_folder
from workbench.extras import require
from workbench.paths import data_dir
from workbench.tasks import MultiTaskData, MultiTaskSplits, Task, classification_task, regression_task

__all__ = ["MULTIDIGITS_TASKS", "make_multidigits", "multidigits_image_folder"]

MULTIDIGITS_TASKS = ("left", "right", "parity", "greater", "sum")
DIGIT_SIZE = 8
POOL_FRACTIONS = (0.6, 0.2, 0.2)  # source images for train, validation, test


def _task(name: str) -> Task:
    if name in ("left", "right"):
        return classification_task(name, n_classes=10)
    if name in ("parity", "greater"):
        return classification_task(name)
    return regression_task(name)


def _labels(name: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The raw label of task ``name`` for digit pairs ``(left, right)``, shape ``(N,)``."""
    return {
        "left": left,
        "right": right,
        "parity": (left + right) % 2,
        "greater": (left > right).astype(int),
        "sum": left + right,
    }[name]


def _source_pools(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of the source images for train, validation and test: disjoint, stratified by digit."""
    pools: list[list[int]] = [[], [], []]
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cuts = np.round(np.cumsum(POOL_FRACTIONS)[:-1] * len(members)).astype(int)
        for pool, part in zip(pools, np.split(members, cuts)):
            pool.extend(part.tolist())
    return [np.sort(np.array(pool)) for pool in pools]


def _compose(
    images: np.ndarray, pool: np.ndarray, n: int, height: int, width: int, max_shift: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` canvases ``(n, 1, height, width)`` and the source indices of their left and right digits."""
    left, right = rng.choice(pool, n), rng.choice(pool, n)
    rows = rng.integers(0, height - DIGIT_SIZE + 1, size=(n, 2))
    left_cols = rng.integers(0, max_shift + 1, size=n)
    right_cols = width - DIGIT_SIZE - rng.integers(0, max_shift + 1, size=n)
    canvas = np.zeros((n, 1, height, width), dtype=np.float32)
    for i in range(n):
        for source, row, col in ((left[i], rows[i, 0], left_cols[i]), (right[i], rows[i, 1], right_cols[i])):
            window = canvas[i, 0, row : row + DIGIT_SIZE, col : col + DIGIT_SIZE]
            np.maximum(window, images[source], out=window)
    return canvas, left, right


def _normalised_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """``I(a; b) / ((H(a) + H(b)) / 2)`` of two discrete label arrays (1 for identical labels, 0 for independent ones)."""
    _, a_codes = np.unique(a, return_inverse=True)
    _, b_codes = np.unique(b, return_inverse=True)
    joint = np.zeros((a_codes.max() + 1, b_codes.max() + 1))
    np.add.at(joint, (a_codes, b_codes), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = (joint[nonzero] * np.log(joint[nonzero] / np.outer(pa, pb)[nonzero])).sum()
    entropy = -(pa[pa > 0] * np.log(pa[pa > 0])).sum() - (pb[pb > 0] * np.log(pb[pb > 0])).sum()
    return float(2 * mutual / entropy) if entropy > 0 else 0.0


def make_multidigits(
    tasks: Sequence[str] = ("left", "right"),
    n_train: int = 6000,
    n_validation: int = 1000,
    n_test: int = 1000,
    height: int = 12,
    width: int = 16,
    max_shift: int = 2,
    seed: int = 0,
    labels_removed: float = 0.0,
) -> MultiTaskSplits:
    """Composed two-digit images ``x`` of shape ``(N, 1, height, width)`` (pixels in [0, 1]) and the chosen tasks.

    ``tasks`` is any of :data:`MULTIDIGITS_TASKS`. ``max_shift`` bounds how far each digit moves
    inwards from its edge (the digits overlap by ``0 … 2 · max_shift`` columns when
    ``width = 16``). ``meta`` holds ``left_source`` and ``right_source``: the indices of the source
    images in scikit-learn's digits. The same ``seed`` gives the same splits and images.

    ``labels_removed`` (in [0, 1)) removes that share of each task's training labels, at random and
    independently per task, seeded by ``seed`` (:meth:`~workbench.tasks.MultiTaskData.without_labels`:
    the training split then has ``masks``); validation and test keep every label. The images, and the
    scaling of ``sum`` (from all training samples), are those without removal. Recorded in the attrs.
    """
    unknown = [t for t in tasks if t not in MULTIDIGITS_TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown MultiDigits tasks {unknown}; available: {list(MULTIDIGITS_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct, got {list(tasks)}")
    if height < DIGIT_SIZE or width < DIGIT_SIZE or max_shift < 0 or width - DIGIT_SIZE - max_shift < 0:
        raise ValueError(f"a {height} × {width} canvas cannot hold 8 × 8 digits shifted by up to {max_shift}")
    if min(n_train, n_validation, n_test) < 1:
        raise ValueError(f"every split needs samples, got {n_train}, {n_validation}, {n_test}")
    if not 0 <= labels_removed < 1:
        raise ValueError(f"labels_removed is the share of training labels to remove, in [0, 1); got {labels_removed}")
    require("sklearn", "digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    pools = _source_pools(digits.target, rng)
    task_list = [_task(t) for t in tasks]
    composed = [_compose(images, pool, n, height, width, max_shift, rng) for pool, n in zip(pools, (n_train, n_validation, n_test))]
    raw = [{t: _labels(t, digits.target[left], digits.target[right]) for t in tasks} for _, left, right in composed]
    scaling = {}
    if "sum" in tasks:
        scaling["sum"] = [float(raw[0]["sum"].mean()), float(raw[0]["sum"].std())]
    attrs = {
        "generator": "multidigits",
        "source": f"scikit-learn {importlib.metadata.version('scikit-learn')} load_digits (1797 images, 8 × 8)",
        "seed": seed,
        "canvas": [height, width],
        "max_shift": max_shift,
        "sizes": {"train": n_train, "validation": n_validation, "test": n_test},
        "source_images": {"train": len(pools[0]), "validation": len(pools[1]), "test": len(pools[2])},
        "target_scaling": scaling,
        "labels_removed": labels_removed,
    }
    splits = []
    for (canvas, left, right), labels in zip(composed, raw):
        targets = {}
        for task in task_list:
            values = labels[task.name]
            if task.name in scaling:
                mean, std = scaling[task.name]
                targets[task.name] = torch.as_tensor((values - mean) / std, dtype=torch.float32)
            elif task.out_features == 1:
                targets[task.name] = torch.as_tensor(values, dtype=torch.float32)
            else:
                targets[task.name] = torch.as_tensor(values, dtype=torch.int64)
        splits.append(MultiTaskData(torch.from_numpy(canvas), targets, task_list, attrs, {"left_source": left, "right_source": right}))
    if labels_removed:
        splits[0] = splits[0].without_labels(labels_removed, seed=seed)
    pooled = {t: np.concatenate([labels[t] for labels in raw]) for t in tasks}
    reference = xr.DataArray(
        [[_normalised_mutual_information(pooled[a], pooled[b]) for b in tasks] for a in tasks],
        dims=("task", "other_task"), coords={"task": list(tasks), "other_task": list(tasks)},
        name="label mutual information",
        attrs={"description": "normalised mutual information between the tasks' labels over all samples"},
    )
    return MultiTaskSplits(*splits, reference=reference)


def _folder_name(n_train: int, n_validation: int, n_test: int, height: int, width: int, max_shift: int, seed: int) -> str:
    """The name of the folder holding the canvases of these options (the tasks do not change the canvases)."""
    return f"seed{seed}-{n_train}-{n_validation}-{n_test}-{height}x{width}-shift{max_shift}"


def _write_missing(folder: Path, options: dict) -> None:
    """Write each split of :func:`make_multidigits` under ``options`` that ``folder`` lacks as ``folder / split``, an image
    folder with every task's labels. Another process writing the same split at the same time leaves one whole folder."""
    missing = [split for split in ("train", "validation", "test") if not (folder / split).exists()]
    if missing:
        every = make_multidigits(MULTIDIGITS_TASKS, **options)
        for split in missing:
            try:
                write_image_folder(getattr(every, split), folder / split)
            except FileExistsError:  # written by another process meanwhile: read, and checked, like any folder already there
                pass


def _checked(images: ImageFolder, data: MultiTaskData) -> None:
    """Raise unless the image folder ``images`` holds ``data``'s labels, in its order."""
    for task in data.task_names:
        if not torch.equal(images.labels[task], data.targets[task]):
            raise ValueError(
                f"{images.folder} holds other labels of task {task!r} than these MultiDigits samples ({len(images)} images, {len(data)} samples): "
                "it was written with other options; give a new folder"
            )


def multidigits_image_folder(
    folder: str | os.PathLike | None = None,
    tasks: Sequence[str] = ("left", "right"),
    n_train: int = 6000,
    n_validation: int = 1000,
    n_test: int = 1000,
    height: int = 12,
    width: int = 16,
    max_shift: int = 2,
    seed: int = 0,
    num_workers: int = 0,
) -> MultiTaskSplits:
    """:func:`make_multidigits`'s splits read from PNG files on disk: training streamed from its image folder.

    ``folder`` (default: ``data_dir("multidigits", NAME)``, NAME spelling out the seed, sizes, canvas
    and shift) holds ``train/``, ``validation/`` and ``test/``, each an image folder
    (:func:`~workbench.data.write_image_folder`) with the labels of every task of
    :data:`MULTIDIGITS_TASKS`, so one folder serves any choice of tasks. A split's folder is written
    once; one already there is read, after its labels are checked to be these samples'.

    ``train`` is a :class:`~workbench.data.StreamedData` over ``train/`` (``num_workers`` processes
    reading ahead); ``validation`` and ``test`` are read from their folders into memory, as
    :class:`~workbench.tasks.MultiTaskData` with :func:`make_multidigits`'s meta, since the studies
    take fixed batches of validation samples. On disk the pixels are 8-bit: multiples of 1/255, so
    the inputs differ from :func:`make_multidigits`'s by that rounding (``(x · 255).round() / 255``).
    The attrs are :func:`make_multidigits`'s plus ``image_folder`` (the folder's path).
    """
    options = dict(n_train=n_train, n_validation=n_validation, n_test=n_test, height=height, width=width, max_shift=max_shift, seed=seed)
    memory = make_multidigits(tasks, **options)
    folder = Path(folder) if folder is not None else data_dir("multidigits", _folder_name(**options))
    attrs = {**memory.attrs, "image_folder": str(folder)}
    _write_missing(folder, options)
    train = image_folder_data(folder / "train", memory.tasks, num_workers=num_workers, attrs=attrs)
    _checked(train.dataset, memory.train)
    held_out = []
    for split in ("validation", "test"):
        part = getattr(memory, split)
        images = ImageFolder(folder / split, memory.tasks)
        _checked(images, part)
        x = torch.stack([images[i][0] for i in range(len(images))])
        held_out.append(MultiTaskData(x, part.targets, part.tasks, attrs, part.meta))
    return MultiTaskSplits(train, *held_out, reference=memory.reference)
