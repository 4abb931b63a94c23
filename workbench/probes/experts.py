"""Which experts serve which task, and whether they collapse: the gates of a gated architecture on a batch.

For a model whose encoder reads out its gates (``gate_readings``: MMoE, CGC, DSelect-k, PLE, HoME, TaskExpert,
the task-routed MoE, AdaTT), per level ``l``
of gated experts, task ``t`` and expert ``e``:

- ``utilisation`` ``U[l, t, e]``: the mean over the task's samples of its gate's weight on ``e`` (0 on an
  expert its gate does not weigh, another task's own);
- ``gate_entropy`` ``H[l, t] = −Σ_e U log U`` (nats; 0 when one expert takes all, ``log n`` when the
  ``gate_size`` ``n`` experts the gate weighs share evenly) and ``sample_entropy``, the mean over samples of
  each sample's gate entropy: low per sample but high overall is routing by input;
- ``own_share`` ``[l, t]``: the share of the task's gate mass on experts of its own (CGC, PLE, AdaTT; NaN
  without any), the sheet's underfitting measure: low when a task leans on the shared experts;
- ``ownership`` ``[l, e] = max_t U[l, t, e] / Σ_t U[l, t, e]``: towards 1 a shared expert has become one
  task's (HoME's expert degradation), ``1/T`` when the tasks use it alike;
- ``dead_fraction`` ``[l, e]``: the fraction of the expert's output units that are exactly 0 on the
  samples it served, those a gate gave it weight (HoME's collapse symptom: ReLU experts whose units die),
  and ``output_std`` ``[l, e]``, the spread of its outputs over those samples (mean over units): an expert
  whose outputs stop varying is collapsed; both NaN for an expert that served no sample. (The sheet's spread
  of the experts' output means and deviations across experts is not computed; ``output_std`` across the
  expert dim shows it. A shared expert's outputs are gathered once per task that it served, so rows the
  tasks share count once per task.)
- ``gate_overlap`` ``[t, t']``: the cosine of ``U[l, t]`` and ``U[l, t']``, averaged over levels: how much two
  tasks share their experts, the probe's task × task reading.

A task's gate is read on the samples it is labelled on (in a :class:`~workbench.tasks.TaskInputs` batch, its
own rows), so a task labelled nowhere in the batch is NaN, as for every probe. An architecture without gates
is refused, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from workbench.probes.isolation import leaves_model_untouched
from workbench.tasks import Inputs, TaskInputs

__all__ = ["expert_gates", "has_gates"]


def has_gates(model) -> bool:
    """Whether ``model``'s encoder reads out its gates (``gate_readings``)."""
    return callable(getattr(model.encoder, "gate_readings", None))


def _rows(reading, index: Tensor | None):
    if index is None:
        return reading.weights, reading.outputs
    return reading.weights[index], reading.outputs[index]


def _per_task(model, x: Inputs | TaskInputs) -> dict[str, dict[str, tuple[list[str], Tensor, Tensor]] | None]:
    """Per task, per level: its experts' names, its gate's weights ``(n_t, n)`` and the experts' outputs on its samples."""
    tasks = model.task_names
    if not isinstance(x, TaskInputs):
        readings = model.encoder.gate_readings(x)
        return {task: {level: (r[task].experts, r[task].weights, r[task].outputs) for level, r in readings.items()} for task in tasks}
    by_group: dict[int, dict] = {}
    chosen: dict[str, dict | None] = {}
    for task in tasks:
        if not x.labelled(task):
            chosen[task] = None
            continue
        group, index = x.rows[task]
        if group not in by_group:
            by_group[group] = model.encoder.gate_readings(x.groups[group])
        chosen[task] = {level: (r[task].experts, *_rows(r[task], index)) for level, r in by_group[group].items()}
    return chosen


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=-1) * np.where(np.isnan(p).all(-1), np.nan, 1.0)


@leaves_model_untouched
@torch.no_grad()
def expert_gates(model, batch: tuple[Inputs | TaskInputs, Mapping[str, Tensor]]) -> xr.Dataset:
    """The gates' readings on ``batch`` (see the module docstring): ``utilisation`` ``(level, task, expert)``,
    ``gate_entropy``, ``sample_entropy``, ``gate_size`` and ``own_share`` ``(level, task)``, ``ownership``, ``dead_fraction`` and
    ``output_std`` ``(level, expert)``, ``gate_overlap`` ``(task, other_task)``."""
    if not has_gates(model):
        raise ValueError(f"expert_gates reads the gates of a gated architecture, whose encoder reads them out (gate_readings); "
                         f"this model's encoder, a {type(model.encoder).__name__}, has none")
    tasks = model.task_names
    per_task = _per_task(model, batch[0])
    levels = list(next(v for v in per_task.values() if v is not None).keys()) if any(v is not None for v in per_task.values()) \
        else list(model.encoder.gate_readings(batch[0].groups[0] if isinstance(batch[0], TaskInputs) else batch[0]))
    names = model.encoder.expert_names
    experts = list(dict.fromkeys(name for task in tasks for name in names(task)))
    n_l, n_t, n_e = len(levels), len(tasks), len(experts)
    utilisation = np.full((n_l, n_t, n_e), np.nan)
    sample_entropy, gate_size, own_share = (np.full((n_l, n_t), np.nan) for _ in range(3))
    dead, spread = np.full((n_l, n_e), np.nan), np.full((n_l, n_e), np.nan)
    for li, level in enumerate(levels):
        served: dict[str, list[Tensor]] = {e: [] for e in experts}
        for ti, task in enumerate(tasks):
            if per_task[task] is None:
                continue
            own, weights, outputs = per_task[task][level]
            weights = weights.double().cpu()
            utilisation[li, ti] = 0.0
            utilisation[li, ti, [experts.index(e) for e in own]] = weights.mean(0).numpy()
            sample_entropy[li, ti] = float(_entropy(weights.numpy()).mean())
            gate_size[li, ti] = len(own)
            mine = [k for k, name in enumerate(own) if name.startswith(f"{task} ")]
            if mine:
                own_share[li, ti] = float(weights[:, mine].sum(1).mean() / weights.sum(1).mean())
            for k, name in enumerate(own):
                used = weights[:, k] > 0  # the samples the expert served for this task (a top-k router skips the rest)
                served[name].append(outputs[used.to(outputs.device), k].flatten(1).double().cpu())
        for ei, name in enumerate(experts):
            out = torch.cat(served[name]) if served[name] else torch.zeros(0)
            if len(out):
                dead[li, ei] = float((out == 0).double().mean())
                spread[li, ei] = float(out.std(0).mean()) if len(out) > 1 else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(utilisation, axis=1)
        ownership = np.where(total > 0, np.nanmax(np.where(np.isnan(utilisation), -np.inf, utilisation), axis=1) / total, np.nan)
        unit = utilisation / np.linalg.norm(utilisation, axis=-1, keepdims=True)
        overlap = np.einsum("lte,lse->lts", unit, unit).mean(0)
    ds = xr.Dataset(
        {
            "utilisation": (("level", "task", "expert"), utilisation),
            "gate_entropy": (("level", "task"), _entropy(utilisation)),
            "sample_entropy": (("level", "task"), sample_entropy),
            "gate_size": (("level", "task"), gate_size),
            "own_share": (("level", "task"), own_share),
            "ownership": (("level", "expert"), ownership),
            "dead_fraction": (("level", "expert"), dead),
            "output_std": (("level", "expert"), spread),
            "gate_overlap": (("task", "other_task"), overlap),
        },
        coords={"level": levels, "task": tasks, "other_task": tasks, "expert": experts},
    )
    ds.attrs.update(probe="expert_gates")
    return ds
