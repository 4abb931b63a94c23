"""Shared fixtures: tiny multi-task models and batches."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset
from hypothesis import settings

# CI runs the same examples every time (a failure there is reproducible, never a coin toss);
# HYPOTHESIS_PROFILE=thorough explores many more.
settings.register_profile("dev", max_examples=25)
settings.register_profile("ci", max_examples=25, derandomize=True, database=None)
settings.register_profile("thorough", max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Under pytest-xdist (`make test` runs one worker per core) each worker, and every kernel or process it starts,
# gets its share of the cores: torch's own default of one thread per core in every worker oversubscribes them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, _threads)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel, regression_task


def tiny_model(n_tasks: int = 3, in_features: int = 5, hidden=(7, 6), seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    tasks = [regression_task(f"t{i}") for i in range(n_tasks)]
    return MultiTaskModel(mlp_encoder(in_features, hidden, torch.nn.Tanh), tasks, representation_dim=hidden[-1])


def tiny_batch(model: MultiTaskModel, n: int = 11, in_features: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g)
    return x, {name: torch.randn(n, generator=g) for name in model.task_names}


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def batch(model):
    return tiny_batch(model)


@pytest.fixture
def no_batched_grad(monkeypatch):
    """``torch.autograd.grad`` without ``is_grads_batched``, as for an operator that has no batching rule."""
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)


class Items(Dataset):
    """The samples of a MultiTaskData as ``(x, {task: target})`` items of a ``Dataset``, read one at a time (as from files);
    a target ``None`` where the data's mask says unlabelled, ``broken`` items (by index) in place of theirs."""

    def __init__(self, data, broken=None):
        self.data, self.broken = data, broken or {}

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        if index in self.broken:
            return self.broken[index]
        labelled = {name: bool(self.data.masks[name][index]) if name in self.data.masks else True for name in self.data.task_names}
        return self.data.x[index], {name: y[index] if labelled[name] else None for name, y in self.data.targets.items()}
