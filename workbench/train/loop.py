"""The training loop: equal-weight multi-task training with probe recorders attached.

``train`` runs a fixed number of optimiser steps on shuffled batches, records the per-task batch
losses every step, evaluates loss and metric per task on held-out data every ``eval_every`` steps,
and lets each :class:`~workbench.probes.ProbeRecorder` sample its probe on the batch about to be
trained on. ``single_task_baselines`` trains one model per task with the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import xarray as xr
from torch import nn

from workbench.probes.recorder import ProbeRecorder
from workbench.progress import progress as progress_bar
from workbench.tasks import MultiTaskData, MultiTaskModel, Task, to_device

__all__ = ["TrainingResult", "train", "single_task_baselines"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class TrainingResult:
    """What a run leaves: the trained model, its metric ``history`` and each recorder's probe history.

    ``history`` holds ``train_loss (step, task)`` for every step and ``loss``, ``metric``
    ``(eval_step, task)`` on the evaluation data.
    """

    model: MultiTaskModel
    history: xr.Dataset
    probes: dict[str, xr.Dataset] = field(default_factory=dict)


def train(
    model: MultiTaskModel,
    data: MultiTaskData,
    steps: int,
    *,
    eval_data: MultiTaskData | None = None,
    batch_size: int = 64,
    optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3),
    recorders: Sequence[ProbeRecorder] = (),
    eval_every: int | None = None,
    eval_batch_size: int = 1024,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train ``model`` on the sum of its task losses for ``steps`` steps; deterministic under ``seed``.

    ``optimizer`` builds any torch optimiser from the trainable parameters
    (``functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)``). ``eval_data`` defaults to
    ``data``; it is evaluated ``eval_batch_size`` samples at a time at step 0, every ``eval_every``
    steps (default: ten times per run) and after the last step. ``device`` (``"cuda"``, ``"cpu"``;
    default: where the model is) receives the model; the data stay where they are and each batch is
    moved when it is used.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    missing = set(model.task_names) - set(data.task_names)
    if missing:
        raise ValueError(f"the data has no targets for tasks {sorted(missing)} of the model")
    eval_data = data if eval_data is None else eval_data
    eval_every = eval_every or max(1, steps // 10)
    if device is not None:
        model.to(device)
    device = model.device
    torch.manual_seed(seed)
    opt = optimizer([p for p in model.parameters() if p.requires_grad])
    batches = data.batches(batch_size, torch.Generator().manual_seed(seed))
    names = model.task_names
    train_loss = np.empty((steps, len(names)))
    eval_steps, eval_loss, eval_metric = [], [], []

    def evaluate(step: int) -> None:
        scores = model.evaluate(eval_data.x, eval_data.targets, batch_size=eval_batch_size)
        eval_steps.append(step)
        eval_loss.append([scores[n][0] for n in names])
        eval_metric.append([scores[n][1] for n in names])

    model.train()
    for step in progress_bar(range(steps), "training", enabled=progress):
        if step % eval_every == 0:
            evaluate(step)
        x, targets = next(batches)
        batch = (to_device(x, device), {name: y.to(device) for name, y in targets.items()})
        for recorder in recorders:
            recorder.maybe_record(step, model, batch)
        losses = model.losses(*batch)
        stacked = torch.stack([losses[n] for n in names])
        opt.zero_grad(set_to_none=True)
        stacked.sum().backward()
        opt.step()
        train_loss[step] = stacked.detach().cpu().numpy()
    evaluate(steps)

    tasks = [model.tasks[n] for n in names]
    history = xr.Dataset(
        {
            "train_loss": (("step", "task"), train_loss),
            "loss": (("eval_step", "task"), np.array(eval_loss)),
            "metric": (("eval_step", "task"), np.array(eval_metric)),
        },
        coords={
            "step": np.arange(steps),
            "eval_step": eval_steps,
            "task": names,
            "metric_name": ("task", [t.metric_name for t in tasks]),
            "higher_is_better": ("task", [t.higher_is_better for t in tasks]),
        },
    )
    provenance = {"model": model.summary(), "data": dict(data.attrs), "seed": seed}
    history.attrs.update(provenance, steps=steps, batch_size=batch_size, optimizer=type(opt).__name__, device=str(device))
    probes = {r.name: r.history.assign_attrs(provenance) for r in recorders}
    return TrainingResult(model, history, probes)


def single_task_baselines(
    model_factory: Callable[[Sequence[Task]], MultiTaskModel],
    data: MultiTaskData,
    steps: int,
    *,
    eval_data: MultiTaskData | None = None,
    seed: int = 0,
    **train_options,
) -> xr.Dataset:
    """Train one model per task with the same loop; final ``loss`` and ``metric`` per ``task``.

    ``model_factory(tasks)`` builds a fresh model for the given tasks; it is called under
    ``torch.manual_seed(seed)`` so every baseline starts from a seeded initialisation.
    """
    eval_data = data if eval_data is None else eval_data
    finals = []
    for task in data.tasks:
        torch.manual_seed(seed)
        model = model_factory([task])
        result = train(model, data.subset([task.name]), steps, eval_data=eval_data.subset([task.name]), seed=seed, **train_options)
        finals.append(result.history[["loss", "metric"]].isel(eval_step=-1, drop=True))
    baselines = xr.concat(finals, dim="task")
    baselines.attrs.update(baseline="single_task", steps=steps, seed=seed)
    return baselines
