"""Fine-tuned sets to merge: one pretrained model and one fine-tuned copy of it per task, cached by recipe.

A :class:`Recipe` says how they are made: the dataset and its tasks, how many multi-task steps
pretrain the model from scratch (the MultiDigits CNN; ``0`` keeps the weights as loaded, MiniLM's)
and how many steps then fine-tune a copy on each task alone, with its optimizer settings and seed.
:func:`fine_tuned_checkpoints` builds them once (a :class:`FineTunedSet`) and caches them under
``checkpoints/DATASET-KEY/`` of the data folder (``data/`` of the checkout, or ``$WORKBENCH_DATA``), ``KEY`` a hash of the recipe and the workbench's version: a
changed recipe gets a folder of its own, so a stale checkpoint is never reused. The folder counts as
complete only once its ``manifest.json`` is written, last; a build killed midway is started again.

Each checkpoint is a plain safetensors file of the model's trainable tensors under their names in
the model (``encoder.…`` and ``heads.TASK.…``); frozen tensors (MiniLM's lower blocks) are the
pretrained ones in every checkpoint and are left out. ``base.safetensors`` holds the pretrained
encoder and every task's pretrained head; ``TASK.safetensors`` the encoder fine-tuned on that task
and the task's head.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.files import atomic_write
from workbench.paths import data_dir
from workbench.studies.problems import load_problem
from workbench.train.loop import Monitor, train
from workbench.version import __version__
from workbench.weights.state_dicts import open_weights, write_state_dict

__all__ = ["Recipe", "FineTunedSet", "fine_tuned_checkpoints", "trainable_state"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Recipe:
    """How the pretrained model and its fine-tuned copies are made (see the module docstring)."""

    dataset: str
    tasks: tuple[str, ...]
    pretrain_steps: int
    finetune_steps: int
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # load_problem options (n_train, trainable_layers, ...)

    def key(self) -> str:
        """12 hex digits from the recipe and the workbench's version."""
        text = json.dumps({**asdict(self), "tasks": list(self.tasks), "workbench": __version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FineTunedSet:
    """The files of one recipe: ``base`` and ``tasks[name]`` (safetensors paths) in ``folder``."""

    folder: Path
    recipe: Recipe
    base: Path
    tasks: dict[str, Path]

    def load(self, name: str = "base") -> dict[str, Tensor]:
        """The tensors of ``"base"`` or of a task's checkpoint."""
        weights = open_weights(self.base if name == "base" else self.tasks[name])
        return {key: weights[key] for key in weights.keys()}


def trainable_state(model, prefixes: tuple[str, ...] = ("encoder.", "heads.")) -> dict[str, Tensor]:
    """The model's trainable parameters whose names start with one of ``prefixes``, detached copies."""
    return {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad and name.startswith(prefixes)}


def _save(tensors: dict[str, Tensor], path: Path, recipe: Recipe) -> None:
    write_state_dict(path, tensors, {"recipe": json.dumps(asdict(recipe), sort_keys=True, default=list)})


def fine_tuned_checkpoints(recipe: Recipe, cache: str | Path | None = None, progress: bool = True, monitor: bool | Monitor = False) -> FineTunedSet:
    """The pretrained and fine-tuned checkpoints of ``recipe``, built unless the cache holds them.

    ``cache`` is by default the data folder's ``checkpoints/`` (:func:`workbench.paths.data_dir`), whatever the working folder. ``monitor`` goes to every run's :func:`~workbench.train.train`."""
    folder = Path(data_dir("checkpoints") if cache is None else cache) / f"{recipe.dataset}-{recipe.key()}"
    files = FineTunedSet(folder, recipe, folder / "base.safetensors", {t: folder / f"{t}.safetensors" for t in recipe.tasks})
    if (folder / MANIFEST).exists():
        return files
    folder.mkdir(parents=True, exist_ok=True)
    problem = load_problem(recipe.dataset, seed=recipe.seed, tasks=list(recipe.tasks), **recipe.options)
    splits = problem.splits
    optimizer = partial(torch.optim.Adam, lr=recipe.lr)
    torch.manual_seed(recipe.seed)
    pretrained = problem.make_model(splits.tasks)
    if recipe.pretrain_steps:
        train(pretrained, splits.train, recipe.pretrain_steps, optimizer=optimizer, batch_size=recipe.batch_size, seed=recipe.seed, eval_every=recipe.pretrain_steps, progress=progress, monitor=monitor).complete("pre-training")
    _save(trainable_state(pretrained), files.base, recipe)
    for task in recipe.tasks:
        model = problem.make_model([t for t in splits.tasks if t.name == task])
        model.load_state_dict({k: v for k, v in pretrained.state_dict().items() if not k.startswith("heads.") or k.startswith(f"heads.{task}.")})
        train(model, splits.train.subset([task]), recipe.finetune_steps, optimizer=optimizer, batch_size=recipe.batch_size, seed=recipe.seed, eval_every=recipe.finetune_steps, progress=progress, monitor=monitor).complete(f"fine-tuning on {task}")
        _save(trainable_state(model), files.tasks[task], recipe)
    with atomic_write(folder / MANIFEST, suffix=".json") as temporary:
        temporary.write_text(json.dumps({"recipe": asdict(recipe), "key": recipe.key(), "files": ["base.safetensors", *(f"{t}.safetensors" for t in recipe.tasks)]}, indent=1, default=list))
    return files
