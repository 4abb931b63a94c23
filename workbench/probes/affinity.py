"""Inter-task affinity: which task's update helps which other task (TAG, Fifty et al. 2021).

``tag_affinity`` is TAG's lookahead: for each source task ``i``, one update of the shared parameters
by the training optimizer's own rule from task ``i``'s gradient alone (see
:mod:`workbench.probes.lookahead`), then every task's loss on the same batch:

    Z_{i→j} = 1 − L_j(θ_s + Δ_i) / L_j(θ_s)

(positive: a step on ``i`` lowers ``j``'s loss). The per-task gradients come from the gradient engine
(or the training step that computed them); the T + 1 loss evaluations (the current parameters and
the T looked-ahead ones) run batched, ``torch.func.functional_call`` under ``vmap`` over T + 1
parameter sets, with the same dropout mask in all of them. Nothing in the model or the optimizer
changes. :func:`tag_affinity_loop` is the reference algorithm as TAG's code runs it (copy the model
and the optimizer, step, evaluate, restore, once per task): slower, but it takes any optimizer.
``cosine_affinity`` is the cheap alternative: the cosine of the per-task gradients.

Both return directed ``(source, target)`` Datasets; :func:`~workbench.probes.task_matrix` averages a
recorded history over training.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
import xarray as xr
from torch import Tensor

from workbench.gradients import Strategy, TaskJacobian, model_task_jacobian
from workbench.probes.conflict import gramian_statistics
from workbench.probes.lookahead import learning_rate, lookahead_parameters
from workbench.probes.isolation import leaves_model_untouched
from workbench.tasks import Inputs, labelled_tasks

__all__ = ["tag_affinity", "tag_affinity_loop", "cosine_affinity"]


def _check_tasks(model) -> list[str]:
    names = model.task_names
    if len(names) < 2:
        raise ValueError(f"affinity relates tasks to each other; the model has one task, {names}")
    return names


def _losses_at(model, parameter_sets: dict[str, Tensor], x: Inputs, targets: Mapping[str, Tensor]) -> Tensor:
    """``(S, T)``: every task's loss with each of S sets of shared parameters (``{name in model: (S, *shape)}``)."""
    names = model.task_names

    labelled = labelled_tasks({t: targets[t] for t in names})

    def losses(parameters: dict[str, Tensor]) -> Tensor:
        outputs = torch.func.functional_call(model, parameters, (x,))
        measured = {t: model.tasks[t].loss(outputs[t], targets[t]) for t in labelled}
        nan = torch.full_like(measured[labelled[0]], torch.nan)
        return torch.stack([measured.get(t, nan) for t in names])  # NaN: a task labelled on no sample of the batch

    with torch.no_grad():
        try:
            return torch.func.vmap(losses, randomness="same")(parameter_sets)
        except RuntimeError as error:  # an operator without a batching rule
            warnings.warn(f"batched lookahead unavailable ({error}); evaluating one parameter set at a time", RuntimeWarning, stacklevel=3)
            count = next(iter(parameter_sets.values())).shape[0]
            return torch.stack([losses({k: v[s] for k, v in parameter_sets.items()}) for s in range(count)])


@leaves_model_untouched
def tag_affinity(
    model,
    batch: tuple[Inputs, Mapping[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    divide_by_lr: bool = False,
    jacobian: TaskJacobian | None = None,
    strategy: Strategy = "auto",
) -> xr.Dataset:
    """TAG's lookahead affinity ``Z_{i→j}`` of a model's tasks on one batch, with ``optimizer``'s update rule.

    ``optimizer`` is the training optimizer (SGD or Adam/AdamW; its state is read, not changed).
    ``divide_by_lr`` divides ``Z`` by the learning rate, as TAG's reference code does. Returns
    ``affinity`` ``(source, target)``, ``loss_before`` ``(target)`` and ``loss_after``
    ``(source, target)``. A task whose loss is zero on the batch (up to rounding: at most
    ``eps²`` of its dtype) has no relative change: refused, naming it.
    """
    names = _check_tasks(model)
    x, targets = batch
    if jacobian is None:
        jacobian = model_task_jacobian(model, x, targets, strategy=strategy)
    shared = model.shared_parameters()
    moved = lookahead_parameters(optimizer, [p for _, p in shared], [jacobian.blocks[n] for n, _ in shared])
    parameter_sets = {f"encoder.{n}": torch.cat([p.detach()[None], m]) for (n, p), m in zip(shared, moved)}
    losses = _losses_at(model, parameter_sets, x, targets)
    ds = _affinity_dataset(names, losses[0], losses[1:], optimizer, [p for _, p in shared], divide_by_lr)
    ds.attrs.update(strategy=jacobian.strategy)
    return ds


@leaves_model_untouched
def tag_affinity_loop(model, batch: tuple[Inputs, Mapping[str, Tensor]], optimizer: torch.optim.Optimizer, *, divide_by_lr: bool = False) -> xr.Dataset:
    """TAG's lookahead affinity by the reference algorithm: for each source task, save the model and the
    optimizer, step the shared parameters with that task's gradient, evaluate every task, restore.

    The same result as :func:`tag_affinity` (which is faster), for any torch optimizer; the model
    and the optimizer are restored exactly (parameters, buffers and optimizer state).
    """
    names = _check_tasks(model)
    x, targets = batch
    shared = [p for _, p in model.shared_parameters()]
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    saved_grads = [p.grad for p in model.parameters()]
    with torch.no_grad():
        before = model.loss_vector(x, targets)
    after = []
    try:
        for source in names:
            if targets[source].shape[0] == 0:  # no label: no step to look ahead with
                after.append(torch.full_like(before, torch.nan))
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = model.losses(x, targets)[source]
            for p, g in zip(shared, torch.autograd.grad(loss, shared, allow_unused=True)):
                p.grad = torch.zeros_like(p) if g is None else g
            optimizer.step()
            with torch.no_grad():
                after.append(model.loss_vector(x, targets))
            model.load_state_dict(saved_model)
            optimizer.load_state_dict(copy.deepcopy(saved_optimizer))  # load_state_dict aliases the saved tensors
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(copy.deepcopy(saved_optimizer))
        for p, g in zip(model.parameters(), saved_grads):
            p.grad = g
    return _affinity_dataset(names, before, torch.stack(after), optimizer, shared, divide_by_lr)


def _affinity_dataset(names: list[str], before: Tensor, after: Tensor, optimizer, shared: list[Tensor], divide_by_lr: bool) -> xr.Dataset:
    """``Z = 1 − after / before`` as a ``(source, target)`` Dataset; ``before`` ``(T,)``, ``after`` ``(T, T)``.

    A task labelled on no sample of the batch (``before`` NaN) has NaN in its row and its column: it
    neither took a step nor has a loss to change.
    """
    unlabelled = torch.isnan(before)
    after = after.clone()
    after[unlabelled, :] = torch.nan
    losses = torch.cat([before[None], after])
    measured = ~(unlabelled[None, :] | torch.cat([unlabelled.new_zeros(1), unlabelled])[:, None])
    if not torch.isfinite(losses[measured]).all():
        bad = sorted({names[j] for j in torch.nonzero(measured & ~torch.isfinite(losses))[:, 1].tolist()})
        raise FloatingPointError(f"non-finite loss of tasks {bad} after a lookahead step; check the learning rate and the targets")
    vanishing = before <= torch.finfo(before.dtype).eps ** 2  # zero up to rounding, as a squared error of exact outputs is
    if vanishing.any():
        zero = [names[j] for j in torch.nonzero(vanishing).flatten().tolist()]
        raise ValueError(f"tasks {zero} have zero loss on this batch: their relative change, and so any affinity onto them, is undefined")
    affinity = 1 - after / before[None, :]
    rates = {learning_rate(optimizer, p) for p in shared}
    if divide_by_lr:
        if len(rates) != 1:
            raise ValueError(f"divide_by_lr needs one learning rate for the shared parameters, found {sorted(rates)}")
        affinity = affinity / rates.pop()
    ds = xr.Dataset(
        {
            "affinity": (("source", "target"), affinity.double().cpu().numpy()),
            "loss_before": ("target", before.double().cpu().numpy()),
            "loss_after": (("source", "target"), after.double().cpu().numpy()),
        },
        coords={"source": names, "target": names},
    )
    ds.attrs.update(probe="tag_affinity", optimizer=type(optimizer).__name__, divide_by_lr=divide_by_lr)
    return ds


@leaves_model_untouched
def cosine_affinity(
    model, batch: tuple[Inputs, Mapping[str, Tensor]], *, jacobian: TaskJacobian | None = None, strategy: Strategy = "auto"
) -> xr.Dataset:
    """The cosine of the per-task gradients of the shared parameters as a ``(source, target)`` affinity (symmetric)."""
    names = _check_tasks(model)
    if jacobian is None:
        x, targets = batch
        jacobian = model_task_jacobian(model, x, targets, strategy=strategy)
    cosine = gramian_statistics(jacobian.gramian())["cosine"]
    ds = xr.Dataset({"affinity": (("source", "target"), cosine)}, coords={"source": names, "target": names})
    ds.attrs.update(probe="cosine_affinity", strategy=jacobian.strategy)
    return ds
