"""The training loop: any registered method, probe recorders attached, checkpoints to resume from.

``train`` runs a fixed number of optimiser steps. At every step the method (see
:mod:`workbench.train.registry`) turns the batch into gradients; the loop records the per-task
batch losses, the task weights the method applied and the seconds the step took (a model's own
auxiliary losses, such as AdapterFusion's regulariser, add their gradient to every method's), lets each
:class:`~workbench.probes.ProbeRecorder` sample its probe, and evaluates loss and metric per task on
held-out data every ``eval_every`` steps. With ``checkpoint`` it saves everything a resumed run needs
(model, optimizer, the method's state, random number generators, the history so far) every
``checkpoint_every`` steps; ``resume=True`` continues from that file with the same numbers an
unbroken run gives. A :class:`Monitor` (``monitor=True``: the live one of :mod:`workbench.viz.monitor`,
in JupyterLab) is shown the run while it trains and may end it after any step.
``single_task_baselines`` trains one model per task with the same loop.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from workbench.data.streamed import StreamedData
from workbench.weights.trees import load_tree, save_tree
from workbench.probes.recorder import ProbeRecorder
from workbench.progress import batch_run, progress as progress_bar
from workbench.tasks import EVALUATION_BATCH, MultiTaskData, MultiTaskModel, Task, labelled_tasks, to_device
from workbench.train.method import Method
from workbench.train.registry import make_method, method_for_tasks

__all__ = ["Monitor", "TrainingResult", "train", "single_task_baselines", "summed_step"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# The live monitor is a face (widgets, plotly): named by its dotted path, as the registries name what they build,
# it is imported only when a run asks for it, so `import workbench.train` imports neither ipywidgets nor plotly.
LIVE_MONITOR = "workbench.viz.monitor.LiveMonitor"


class Monitor(Protocol):
    """What the loop asks of a monitor: ``due()`` after every step (cheap), then ``update`` when due and once at
    the end, ``should_stop()`` after every step, ``close()`` when the run ends (also on an error)."""

    def due(self) -> bool: ...

    def update(self, done: int, history: xr.Dataset, recorders: Sequence[ProbeRecorder]) -> None: ...

    def should_stop(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class TrainingResult:
    """What a run leaves: the trained model, its metric ``history``, each recorder's probe history and the method.

    ``history`` holds ``train_loss``, ``weights`` (the task weights the method applied, NaN for
    methods without weights) over ``(step, task)``, ``step_seconds`` over ``step``, and ``loss``,
    ``metric`` over ``(eval_step, task)`` on the evaluation data.
    """

    model: MultiTaskModel
    history: xr.Dataset
    probes: dict[str, xr.Dataset] = field(default_factory=dict)
    method: Method | None = None

    def complete(self, what: str = "the run") -> TrainingResult:
        """This result, when the run did every step asked for; a run ended by the monitor's Stop is refused, naming
        ``what`` and where it stopped (a study that combines runs needs each of them whole)."""
        stopped = self.history.attrs.get("stopped_at")
        if stopped is not None:
            raise RuntimeError(f"{what} was stopped at step {stopped} of {self.history.attrs['steps']}; the study needs every run whole: run it again")
        return self


class _History:
    """The arrays a run fills step by step; part of every checkpoint."""

    def __init__(self, steps: int, n_tasks: int) -> None:
        self.train_loss = np.full((steps, n_tasks), np.nan)
        self.weights = np.full((steps, n_tasks), np.nan)
        self.step_seconds = np.full(steps, np.nan)
        self.eval_steps: list[int] = []
        self.eval_loss: list[list[float]] = []
        self.eval_metric: list[list[float]] = []

    def state_dict(self, done: int) -> dict[str, Any]:
        return {
            "train_loss": self.train_loss[:done], "weights": self.weights[:done], "step_seconds": self.step_seconds[:done],
            "eval_steps": self.eval_steps, "eval_loss": self.eval_loss, "eval_metric": self.eval_metric,
        }

    def dataset(self, done: int, tasks: Sequence[Task]) -> xr.Dataset:
        """The first ``done`` steps as a Dataset: ``train_loss``, ``weights`` over ``(step, task)``, ``step_seconds`` over
        ``step``, ``loss``, ``metric`` over ``(eval_step, task)`` (the evaluations so far)."""
        names = [t.name for t in tasks]
        evaluated = (len(self.eval_steps), len(names))
        return xr.Dataset(
            {
                "train_loss": (("step", "task"), self.train_loss[:done]),
                "weights": (("step", "task"), self.weights[:done]),
                "step_seconds": ("step", self.step_seconds[:done]),
                "loss": (("eval_step", "task"), np.reshape(self.eval_loss, evaluated)),
                "metric": (("eval_step", "task"), np.reshape(self.eval_metric, evaluated)),
            },
            coords={
                "step": np.arange(done),
                "eval_step": list(self.eval_steps),
                "task": names,
                "metric_name": ("task", [t.metric_name for t in tasks]),
                "higher_is_better": ("task", [t.higher_is_better for t in tasks]),
            },
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        done = len(state["train_loss"])
        if done > len(self.train_loss):
            raise ValueError(f"the checkpoint has {done} steps done, more than the {len(self.train_loss)} asked for")
        self.train_loss[:done], self.weights[:done], self.step_seconds[:done] = state["train_loss"], state["weights"], state["step_seconds"]
        self.eval_steps, self.eval_loss, self.eval_metric = list(state["eval_steps"]), list(state["eval_loss"]), list(state["eval_metric"])


class _MethodsByTasks:
    """The run's method, and one instance of it for each set of tasks that a batch labelled for some tasks only has met.

    A step whose batch has labels for tasks ``S`` only is a step of the problem of ``S``: the method
    instance for ``S`` (:func:`~workbench.train.registry.method_for_tasks`) trains a view of the model with those tasks
    (:meth:`~workbench.tasks.MultiTaskModel.restricted`), so the other tasks contribute no gradient and
    no stateful method's memory of the full problem (DWA's history, FAMO's logits, GradNorm's weights)
    is touched by them. Each instance keeps its own state; its learnable parts join the optimizer.
    """

    def __init__(self, model: MultiTaskModel, method: Method, opt: torch.optim.Optimizer, device: torch.device) -> None:
        self.model, self.full, self.names, self.opt, self.device = model, method, model.task_names, opt, device
        self.partial: dict[tuple[str, ...], Method] = {}
        self.views: dict[tuple[str, ...], MultiTaskModel] = {}

    def for_tasks(self, labelled: tuple[str, ...]) -> tuple[MultiTaskModel, Method]:
        """The model (or its view) and the method instance that train a batch labelled for the tasks ``labelled``."""
        if len(labelled) == len(self.names):
            return self.model, self.full
        if labelled not in self.partial:
            method = method_for_tasks(self.full, [self.names.index(t) for t in labelled], len(self.names)).to(self.device)
            if method.parameters():
                self.opt.add_param_group({"params": method.parameters()})
            self.partial[labelled], self.views[labelled] = method, self.model.restricted(labelled)
        return self.views[labelled], self.partial[labelled]

    def end_epoch(self) -> None:
        for method in (self.full, *self.partial.values()):
            method.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {",".join(tasks): method.state_dict() for tasks, method in self.partial.items()}

    def prepare(self, state: dict[str, Any]) -> None:
        """Build the instances a checkpoint holds (before the optimizer's state is loaded: they may own parameter groups)."""
        for key in state:
            self.for_tasks(tuple(key.split(",")))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, saved in state.items():
            self.partial[tuple(key.split(","))].load_state_dict(saved)


def _spread(values, labelled: tuple[str, ...], names: list[str]) -> np.ndarray:
    """``(T,)``: the values of the labelled tasks in task order, NaN for the others."""
    spread = np.full(len(names), np.nan)
    spread[[names.index(t) for t in labelled]] = values.detach().cpu().numpy()
    return spread


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (asked of IPython only where it is already imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def _open_monitor(monitor: bool | Monitor) -> Monitor | None:
    """The run's monitor: ``monitor`` itself, or for ``True`` the live one, displayed, in a kernel that is no batch run."""
    if monitor is False:
        return None
    if monitor is True:
        if batch_run() or not _in_kernel():
            return None
        module, _, name = LIVE_MONITOR.rpartition(".")
        return getattr(importlib.import_module(module), name).displayed()
    missing = [call for call in ("due", "update", "should_stop", "close") if not callable(getattr(monitor, call, None))]
    if missing:
        raise TypeError(f"monitor must be True, False or a Monitor; {type(monitor).__name__} lacks {missing}")
    return monitor


def _module_hooks(model, name: str) -> list[Callable]:
    """The method ``name`` of every module of the model that has one."""
    return [hook for module in model.modules() if callable(hook := getattr(module, name, None))]


def _after_optimizer_step(model) -> None:
    """Call ``after_optimizer_step()`` on every module of the model that has one (SMoRA's balancing bias)."""
    for hook in _module_hooks(model, "after_optimizer_step"):
        hook()


def _auxiliary_backward(model, x, targets: Mapping[str, Tensor]) -> None:
    """Add the gradient of the model's auxiliary losses to what the method left in the gradients: the sum of every
    module's ``auxiliary_loss(x, targets)`` (a scalar, or ``None``: AdapterFusion's value regulariser). A loss of the
    model's own, beside the tasks' losses, so that every method adds it alike (as Rep-MTL's regulariser is added to an
    aggregated update)."""
    losses = [loss for hook in _module_hooks(model, "auxiliary_loss") if (loss := hook(x, targets)) is not None]
    if losses:
        torch.stack(losses).sum().backward()


def summed_step(model: MultiTaskModel, optimizer: torch.optim.Optimizer, x, targets: Mapping[str, Tensor]) -> None:
    """One training step as :func:`train` takes it with the ``"sum"`` method, on the batch ``(x, targets)``: the summed
    task losses' backward, the model's auxiliary losses' (Align-LoRA's alignment term), the optimizer's step and the
    modules' after-step hooks (SMoRA's balancing bias). What timings and memory of a scheme's step measure."""
    optimizer.zero_grad(set_to_none=True)
    sum(model.losses(x, targets).values()).backward()
    _auxiliary_backward(model, x, targets)
    optimizer.step()
    _after_optimizer_step(model)


def train(
    model: MultiTaskModel,
    data: MultiTaskData | StreamedData,
    steps: int,
    *,
    method: str | Method = "sum",
    eval_data: MultiTaskData | StreamedData | None = None,
    batch_size: int = 64,
    optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3),
    recorders: Sequence[ProbeRecorder] = (),
    eval_every: int | None = None,
    eval_batch_size: int = EVALUATION_BATCH,
    seed: int = 0,
    device: torch.device | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    monitor: bool | Monitor = False,
) -> TrainingResult:
    """Train ``model`` for ``steps`` steps with ``method`` (a name from the registry or a :class:`Method`).

    ``optimizer`` builds any torch optimiser from the trainable parameters (and the method's own,
    as uncertainty weighting's): ``functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)``.
    ``data`` and ``eval_data`` are samples in memory or streamed from a ``Dataset`` (a
    :class:`~workbench.data.StreamedData`: the same samples give the same run). ``eval_data``
    defaults to ``data``; it is evaluated ``eval_batch_size`` samples at a time at step
    0, every ``eval_every`` steps (default: ten times per run) and after the last step.
    ``data`` may also be one dataset per task (:class:`~workbench.data.TaskDatasets`) or have missing
    labels: a batch labelled for some tasks only trains those tasks alone (see :class:`_MethodsByTasks`);
    the others' ``train_loss`` and ``weights`` are NaN at that step, and a batch labelled for no task
    is skipped. ``device`` (``"cuda"``, ``"cpu"``; default: where the model is) receives the model and the
    method; the data stay where they are and each batch is moved when it is used. With
    ``checkpoint`` the run is saved there every ``checkpoint_every`` steps (default: at the end);
    ``resume=True`` continues from it when it exists. Deterministic under ``seed``.

    ``monitor=True`` shows the curves per task, the latest task × task probe reading and a Stop button
    while it trains, in a Jupyter kernel only (silent, and nothing built, in a batch run or a plain
    process); any :class:`Monitor` may be given instead. Stopped after step ``k`` (``k`` steps done),
    the run saves its checkpoint (when it has one) as a checkpoint at ``k`` (resuming from it gives an
    unbroken run's numbers), evaluates at ``k`` and returns a history of ``k`` steps with
    ``attrs["stopped_at"] = k``; ``attrs["steps"]`` stays the steps asked for.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    missing = set(model.task_names) - set(data.task_names)
    if missing:
        raise ValueError(f"the data has no targets for tasks {sorted(missing)} of the model")
    # streamed data refuse a task labelled nowhere when made (and counting their labels reads every item): in memory only
    unlabelled = [name for name in model.task_names if isinstance(data, MultiTaskData) and data.labelled(name) == 0]
    if unlabelled:
        raise ValueError(f"tasks {unlabelled} have no labelled sample in the training data")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint path to resume from")
    eval_data = data if eval_data is None else eval_data
    eval_every = eval_every or max(1, steps // 10)
    checkpoint_every = checkpoint_every or steps
    if device is not None:
        model.to(device)
    device = model.device
    method = make_method(method, len(model.task_names)) if isinstance(method, str) else method
    method.to(device)
    torch.manual_seed(seed)
    opt = optimizer([p for p in model.parameters() if p.requires_grad] + method.parameters())
    names = model.task_names
    history = _History(steps, len(names))
    config = {"method": method.describe(), "batch_size": batch_size, "seed": seed, "tasks": names, "optimizer": type(opt).__name__}
    methods = _MethodsByTasks(model, method, opt, device)
    start = 0
    if resume and Path(checkpoint).exists():
        start = _resume(Path(checkpoint), model, opt, methods, history, recorders, config, device)
    per_epoch = data.steps_per_epoch(batch_size)

    def evaluate(step: int) -> None:
        scores = model.evaluate_batches(eval_data.batches(eval_batch_size))
        history.eval_steps.append(step)
        history.eval_loss.append([scores[n][0] for n in names])
        history.eval_metric.append([scores[n][1] for n in names])

    tasks = [model.tasks[n] for n in names]
    live = _open_monitor(monitor)
    done = steps
    model.train()
    with (
        contextlib.closing(data.stream(start, batch_size, seed)) as batches,  # read ahead where the data stream from disk
        contextlib.closing(live) if live is not None else contextlib.nullcontext(),
    ):
        for step in progress_bar(range(start, steps), "training", enabled=progress, initial=start, total=steps):
            if step % eval_every == 0:
                evaluate(step)
            x, targets = next(batches)
            x, targets = to_device(x, device), {name: targets[name].to(device) for name in names}  # the data may hold more tasks
            labelled = tuple(labelled_tasks(targets))  # in task order: targets were just rebuilt in it
            began = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            jacobian = None
            if labelled:
                trained, active = methods.for_tasks(labelled)
                on = {name: targets[name] for name in labelled}
                outcome = active.backward(trained, x, on)
                _auxiliary_backward(trained, x, on)
                jacobian = outcome.jacobian if outcome.jacobian is not None and outcome.jacobian.tasks == names else None
            seconds = time.perf_counter() - began
            for recorder in recorders:
                recorder.maybe_record(step, model, (x, targets), jacobian, opt)
            began = time.perf_counter()
            if labelled:
                opt.step()
                _after_optimizer_step(model)
                active.after_step(trained, x, on)
            if (step + 1) % per_epoch == 0:
                methods.end_epoch()
            history.step_seconds[step] = seconds + time.perf_counter() - began
            if labelled:
                history.train_loss[step] = _spread(outcome.losses, labelled, names)
                if outcome.weights is not None:
                    history.weights[step] = _spread(outcome.weights, labelled, names)
            saved = checkpoint is not None and (step + 1) % checkpoint_every == 0
            if saved:
                _save(Path(checkpoint), step + 1, model, opt, methods, history, recorders, config)
            if live is not None and live.should_stop():
                done = step + 1
                if checkpoint is not None and not saved:
                    _save(Path(checkpoint), done, model, opt, methods, history, recorders, config)
                break
            if live is not None and live.due():
                live.update(step + 1, history.dataset(step + 1, tasks).assign_attrs(steps=steps, method=method.describe()), recorders)
        if not history.eval_steps or history.eval_steps[-1] != done:
            evaluate(done)
        result = history.dataset(done, tasks)
        provenance = {"model": model.summary(), "data": dict(data.attrs), "seed": seed}
        result.attrs.update(provenance, steps=steps, batch_size=batch_size, optimizer=type(opt).__name__, device=str(device), method=method.describe())
        if done < steps:
            result.attrs["stopped_at"] = done
        if live is not None:
            live.update(done, result, recorders)
    probes = {r.name: r.history.assign_attrs(provenance) for r in recorders}
    return TrainingResult(model, result, probes, method)


def _save(path: Path, done: int, model, opt, methods: _MethodsByTasks, history: _History, recorders, config: dict) -> None:
    save_tree(
        {
            "step": done, "config": config, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "method": methods.full.state_dict(), "partial_methods": methods.state_dict(), "rng": _rng_state(), "history": history.state_dict(done),
            "recorders": {r.name: r.state_dict() for r in recorders},
        },
        path,
    )


def _resume(path: Path, model, opt, methods: _MethodsByTasks, history: _History, recorders, config: dict, device) -> int:
    """Load the checkpoint into the run's objects; returns the step to continue from."""
    saved = load_tree(path, device=device)
    differing = {k: (saved["config"].get(k), v) for k, v in config.items() if saved["config"].get(k) != v}
    if differing:
        raise ValueError(f"{path} was saved by another run; (checkpoint, now) differ in {differing}")
    model.load_state_dict(saved["model"])
    partial = saved.get("partial_methods", {})
    methods.prepare(partial)
    opt.load_state_dict(saved["optimizer"])
    methods.full.load_state_dict(saved["method"])
    methods.load_state_dict(partial)
    history.load_state_dict(saved["history"])
    for recorder in recorders:
        recorder.load_state_dict(saved["recorders"].get(recorder.name, []))
    _set_rng_state({k: v.cpu() if k == "torch" else [s.cpu() for s in v] for k, v in saved["rng"].items()})
    return int(saved["step"])


def single_task_baselines(
    model_factory: Callable[[Sequence[Task]], MultiTaskModel],
    data: MultiTaskData | StreamedData,
    steps: int,
    *,
    eval_data: MultiTaskData | StreamedData | None = None,
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
