"""The gradient engine: per-task gradients over the shared parameters, from one forward pass.

Every probe and every aggregator asks this module for per-task gradients; nothing else loops over
tasks calling backward. For a :class:`~workbench.tasks.MultiTaskModel` the work is split in two:

1. the encoder runs once; each head runs on its own detached copy of the representation ``Z``, so one
   backward through the (cheap) heads gives every task's cotangent ``V_t = ∂L_t/∂Z``, shape ``(T, *Z.shape)``;
2. one batched vector-Jacobian product of the encoder (``torch.autograd.grad`` with
   ``is_grads_batched``: a vmap over the T cotangents) gives the per-task gradient of every shared
   parameter tensor.

Differentiating the stacked losses directly (what :func:`task_jacobian` does for arbitrary losses)
would push T batched cotangents through every head and add up T mostly-zero ``(T, *Z.shape)``
tensors at ``Z``; the split avoids that O(T²) work. From the blocks follow the T × P Jacobian, the
T × T Gramian ``G = J Jᵀ``, and both per parameter tensor, per module and per block.

A batch whose tasks are labelled on different samples (a :class:`~workbench.tasks.TaskInputs`: a
batch per task's dataset, or missing labels) runs the encoder once per input group; each group's
``Z_g`` is differentiated for the tasks labelled on it only, so a batch per task costs T encoder
forwards of ``B_t`` samples and T backward passes (``benchmarks/bench_data.py`` measures it
against a shared batch), and a task with no labelled sample in the batch gets a zero row and a
NaN loss: no gradient, and NaN in every probe, never a number that looks measured.

Which way is faster depends on the encoder. A vmapped encoder backward (``"batched"``) wins on small
MLPs at many tasks, where Python and autograd overhead dominate; T plain encoder backward passes
(``"loop"``) can win through wide layers or attention; and for a few tasks on a small network the
two-stage split itself costs more than it saves, where ``"direct"`` (one forward, then one backward
of each task's loss through its head and the encoder, with ``Z`` among the differentiated tensors
when its cotangents are kept) is fastest. ``strategy="auto"`` (the default for models) learns the
fastest per encoder, input shape and request without extra work: its first calls take the
strategies in turn, each timing the work it does anyway; a strategy's first :data:`WARMUP` calls
(one-time costs: vmap's set-up, allocator growth) are not counted, and once each has :data:`TRIALS`
counted calls, later calls use the one with the lowest median. Each result says which strategy
computed it (:attr:`TaskJacobian.strategy`). The strategies agree to float rounding (about 1e-8
relative); pass one explicitly for bitwise-reproducible runs.
"""

from __future__ import annotations

import math
import re
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.tasks import Inputs, TaskInputs, check_finite

__all__ = ["STRATEGIES", "TaskJacobian", "RepresentationPass", "representation_pass", "encoder_vjp", "task_jacobian", "model_task_jacobian", "layer_label"]

Grouping = Literal["tensor", "module", "block"]
Strategy = Literal["auto", "batched", "loop", "direct"]
STRATEGIES = ("batched", "loop", "direct")
_INDEX = re.compile(r"\.\d+(?=\.|$)")


def layer_label(name: str, by: Grouping) -> str:
    """The layer a parameter tensor belongs to: itself (``"tensor"``), its owning module (``"module"``),
    or its block (``"block"``: the name up to its first numeric index, ``encoder.layer.4`` of
    ``encoder.layer.4.attention.self.query.weight`` or ``0`` of ``0.weight``; the owning module when
    the name has no index, as ``embeddings.LayerNorm``)."""
    if by == "tensor":
        return name
    module = name.rpartition(".")[0] or name
    if by == "module":
        return module
    if by == "block":
        if name.split(".")[0].isdigit():
            return name.split(".")[0]
        found = _INDEX.search(name)
        return name[: found.end()] if found else module
    raise ValueError(f"by must be 'tensor', 'module' or 'block', not {by!r}")


@dataclass(frozen=True)
class TaskJacobian:
    """Per-task gradients of ``T`` losses with respect to named parameter tensors.

    ``blocks[name]`` has shape ``(T, *parameter.shape)``: row ``t`` is ``∇ L_t`` for that tensor (zeros
    where ``L_t`` does not depend on it). ``losses`` holds the loss values, shape ``(T,)``.
    ``representation_grads`` is ``∂L_t/∂Z`` of shape ``(T, *Z.shape)`` when the Jacobian came from a
    model's shared representation ``Z`` (the per-sample task saliency of Rep-MTL), else ``None``.
    ``strategy`` says how the blocks were computed: ``"batched"`` (one vmapped encoder backward),
    ``"loop"`` (one encoder backward per task) or ``"direct"`` (one backward per task through its head
    and the encoder). ``task_grads``, when asked for, maps each task-specific parameter (a
    head's, or one an encoder holds for a task) by its name in the model to the gradient of its own
    task's loss, shape ``parameter.shape``.
    """

    tasks: list[str]
    blocks: dict[str, Tensor]
    losses: Tensor
    representation_grads: Tensor | None = None
    strategy: str = "batched"
    task_grads: dict[str, Tensor] | None = None

    def matrix(self) -> Tensor:
        """The Jacobian ``J`` of shape ``(T, P)``: every block flattened and concatenated in order."""
        return torch.cat([b.reshape(len(self.tasks), -1) for b in self.blocks.values()], dim=1)

    def groups(self, by: Grouping = "tensor") -> dict[str, list[str]]:
        """Tensor names per layer, in order: each tensor alone, grouped by owning module or by block (see :func:`layer_label`)."""
        grouped: dict[str, list[str]] = {}
        for name in self.blocks:
            grouped.setdefault(layer_label(name, by), []).append(name)
        return grouped

    def gramians(self, by: Grouping = "tensor") -> dict[str, Tensor]:
        """``{layer: G_layer}`` with ``G_layer = J_layer J_layerᵀ`` of shape ``(T, T)``."""
        t = len(self.tasks)
        result = {}
        for layer, names in self.groups(by).items():
            gram = torch.zeros(t, t, dtype=self.losses.dtype, device=self.losses.device)
            for name in names:
                flat = self.blocks[name].reshape(t, -1)
                gram = gram + flat @ flat.T
            result[layer] = gram
        return result

    def gramian(self) -> Tensor:
        """The Gramian ``G = J Jᵀ`` of shape ``(T, T)`` over all blocks (the sum of the per-tensor Gramians)."""
        return sum(self.gramians("tensor").values())  # type: ignore[return-value]


def _check_losses(losses: Mapping[str, Tensor]) -> None:
    if not losses:
        raise ValueError("no losses to differentiate")
    for name, loss in losses.items():
        if loss.dim() != 0:
            raise ValueError(f"loss of task {name!r} must be a scalar, got shape {tuple(loss.shape)}")
    check_finite(losses)


def task_jacobian(
    losses: Mapping[str, Tensor], params: Sequence[tuple[str, Tensor]], *, strategy: Literal["batched", "loop"] = "batched"
) -> TaskJacobian:
    """The Jacobian of arbitrary scalar ``losses`` (``{task: loss}``) with respect to the named ``params``.

    One batched backward differentiates all ``T`` losses at once (``strategy="loop"``: one backward
    per loss). A parameter that a loss does not reach gets a zero row. Raises ``ValueError`` on a
    non-scalar or non-finite loss, naming the task. For a :class:`~workbench.tasks.MultiTaskModel`
    prefer :func:`model_task_jacobian`.
    """
    _check_losses(losses)
    names = list(losses)
    stacked = torch.stack([losses[n] for n in names])
    identity = torch.eye(len(names), dtype=stacked.dtype, device=stacked.device)
    grads, used = _vjp(stacked, params, identity, strategy)
    return TaskJacobian(names, grads, stacked.detach(), strategy=used)


@dataclass(frozen=True)
class RepresentationPass:
    """One encoder forward per input group and every head on its own detached copy of ``Z``, differentiated once.

    ``representations`` holds each input group's ``Z_g`` ``(B_g, ...)`` with the encoder's graph (one
    group unless the batch is a :class:`~workbench.tasks.TaskInputs` of several); ``routes[g]`` the
    task indices that group's samples are labelled for; ``group_cotangents[g]`` ``(len(routes[g]), *Z_g.shape)``
    their ``∂L_t/∂Z_g``. ``losses`` ``(T,)`` (detached) is NaN for a task with no labelled sample in the
    batch, whose cotangents and head gradients are zero. ``head_grads`` maps every trainable head
    parameter (its name in the model) to the gradient of its task's loss.
    """

    representations: list[Tensor]
    routes: list[list[int]]
    group_cotangents: list[Tensor]
    losses: Tensor
    head_grads: dict[str, Tensor]

    @property
    def z(self) -> Tensor:
        """The representation ``Z`` of the whole batch, the groups' concatenated along the samples."""
        return self.representations[0] if len(self.representations) == 1 else torch.cat(self.representations)

    @property
    def cotangents(self) -> Tensor:
        """``∂L_t/∂Z`` ``(T, *Z.shape)`` of the whole batch: zero where a sample is not labelled for the task."""
        t = len(self.losses)
        parts = []
        for z, route, cotangent in zip(self.representations, self.routes, self.group_cotangents):
            full = cotangent.new_zeros((t, *z.shape))
            full[route] = cotangent
            parts.append(full)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def backward(self, weights: Tensor) -> None:
        """Backpropagate ``Σ_t weights[t] ∂L_t/∂Z`` (weights ``(T,)``) into the encoder's parameters, one backward for all groups."""
        torch.autograd.backward(
            self.representations, [torch.tensordot(weights[route].to(c.dtype), c, dims=1) for route, c in zip(self.routes, self.group_cotangents)]
        )


def _routes(model, x: Inputs | TaskInputs, targets: Mapping[str, Tensor]) -> tuple[list[int], list[list[int]]]:
    """The indices of the tasks labelled in the batch, and for each input group those among them it serves."""
    names = model.task_names
    labelled = [i for i, name in enumerate(names) if name in targets and targets[name].shape[0] > 0]
    if not isinstance(x, TaskInputs):
        return labelled, [labelled]
    routes: list[list[int]] = [[] for _ in x.groups]
    for i in labelled:
        if not x.labelled(names[i]):
            raise ValueError(f"task {names[i]!r} has {targets[names[i]].shape[0]} targets in the batch but is routed to no sample")
        routes[x.rows[names[i]][0]].append(i)
    return labelled, routes


def representation_pass(model, x: Inputs | TaskInputs, targets: Mapping[str, Tensor]) -> RepresentationPass:
    """The first stage of the engine: one forward per input group, one backward through the heads (see the module docstring)."""
    names = model.task_names
    labelled, routes = _routes(model, x, targets)
    if not labelled:
        raise ValueError(f"no task of {names} is labelled on any sample of the batch")
    representations = model.represent_groups(x)
    group_of = {i: g for g, route in enumerate(routes) for i in route}
    leaves = {i: representations[group_of[i]].detach().requires_grad_() for i in labelled}  # each head sees its own copy of Z
    outputs = {}
    for i in labelled:
        outputs.update(model.routed_outputs([leaves[i] if g == group_of[i] else None for g in range(len(representations))], x, [names[i]]))
    losses = model.losses_from_outputs(outputs, targets)
    stacked = torch.stack([losses[names[i]] for i in labelled])
    heads = [(f"heads.{names[i]}.{name}", p) for i in labelled for name, p in model.heads[names[i]].named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(stacked.sum(), [leaves[i] for i in labelled] + [p for _, p in heads], allow_unused=True, materialize_grads=True)
    by_task = dict(zip(labelled, grads[: len(labelled)]))
    head_grads = {name: g for (name, _), g in zip(heads, grads[len(labelled) :])}
    for i, name in enumerate(names):
        if i not in by_task:
            head_grads.update({f"heads.{name}.{n}": torch.zeros_like(p) for n, p in model.heads[name].named_parameters() if p.requires_grad})
    all_losses = torch.full((len(names),), torch.nan, dtype=stacked.dtype, device=stacked.device)
    all_losses[labelled] = stacked.detach()
    cotangents = [torch.stack([by_task[i] for i in route]) if route else z.new_zeros((0, *z.shape)) for z, route in zip(representations, routes)]
    return RepresentationPass(representations, routes, cotangents, all_losses, head_grads)


def encoder_vjp(first: RepresentationPass, params: Sequence[tuple[str, Tensor]], strategy: Literal["batched", "loop"] = "batched") -> tuple[dict[str, Tensor], str]:
    """The second stage: ``({name: (T, *p.shape)}, strategy used)``, the rows ``∂L_t/∂Z · ∂Z/∂p``, batched or in a loop.

    Each input group is differentiated for the tasks it serves only: a batch per task costs one
    plain encoder backward per task (what the ``"loop"`` costs on a shared batch, whichever strategy
    is asked for), a shared batch one batched backward. A task labelled nowhere in the batch gets
    zero rows.
    """
    if strategy not in ("batched", "loop"):
        raise ValueError(f"the encoder's vector-Jacobian products are 'batched' or a 'loop', not {strategy!r}")
    t = len(first.losses)
    if len(first.representations) == 1 and first.routes[0] == list(range(t)):
        return _vjp(first.representations[0], params, first.group_cotangents[0], strategy)
    blocks = {name: torch.zeros(t, *p.shape, dtype=p.dtype, device=p.device) for name, p in params}
    used = strategy
    for z, route, cotangents in zip(first.representations, first.routes, first.group_cotangents):
        if len(route) == 1:  # one task on the group: a plain backward, a vmap over one cotangent only costs more
            rows, _ = _vjp(z, params, cotangents, "loop")
        elif route:
            rows, got = _vjp(z, params, cotangents, strategy)
            used = got if got != strategy else used  # "loop" where the batched backward fell back
        for name, block in (rows.items() if route else ()):
            blocks[name][route] += block
    return blocks, used


def model_task_jacobian(
    model,
    x: Inputs,
    targets: Mapping[str, Tensor],
    *,
    keep_representation_grads: bool = False,
    task_grads: bool = False,
    strategy: Strategy = "auto",
) -> TaskJacobian:
    """Per-task gradients of a :class:`~workbench.tasks.MultiTaskModel` over its shared parameters on one batch.

    ``x`` is the input batch and ``targets`` maps every task to its targets ``(B,)``. One encoder
    forward, one backward through the heads, and the encoder's T vector-Jacobian products, either
    in one batched backward (``strategy="batched"``) or one backward per task (``"loop"``); or one
    forward and one backward per task through its head and the encoder (``"direct"``). ``"auto"``
    learns the fastest for this encoder, input shape and request over its first calls.
    ``keep_representation_grads`` keeps ``∂L_t/∂Z`` ``(T, *Z.shape)`` in the result (memory: T copies
    of ``Z``); ``task_grads`` adds the gradients of the task-specific parameters (heads, and those the
    encoder holds for one task) from the same passes, which is what a training step needs.
    """
    if strategy not in ("auto", *STRATEGIES):
        raise ValueError(f"strategy must be 'auto' or one of {list(STRATEGIES)}, not {strategy!r}")

    shared = model.shared_parameters()

    def compute(chosen: str) -> TaskJacobian:
        if chosen == "direct":
            return _direct_jacobian(model, x, targets, shared, keep_representation_grads, task_grads)
        return _two_stage_jacobian(model, x, targets, shared, keep_representation_grads, task_grads, chosen)

    if strategy == "auto":
        signature = _signature(x, shared, len(model.task_names), keep_representation_grads, task_grads)
        return _learned(model.encoder, signature, compute)
    return compute(strategy)


def _two_stage_jacobian(
    model, x: Inputs | TaskInputs, targets: Mapping[str, Tensor], shared: Sequence[tuple[str, Tensor]], keep_representation_grads: bool, task_grads: bool, strategy: str
) -> TaskJacobian:
    """The representation pass, then the encoder's VJPs of the ``shared`` parameters by ``strategy`` (``"batched"`` or ``"loop"``)."""
    first = representation_pass(model, x, targets)
    resident = model.encoder_task_parameters() if task_grads else {}
    extra = [(name, p) for params in resident.values() for name, p in params]
    blocks, used = encoder_vjp(first, [*shared, *extra], strategy)
    own = None
    if task_grads:
        rows = {task: i for i, task in enumerate(model.task_names)}
        own = {**first.head_grads, **{name: blocks.pop(name)[rows[task]] for task, params in resident.items() for name, _ in params}}
    representation = first.cotangents if keep_representation_grads else None
    return TaskJacobian(model.task_names, blocks, first.losses, representation, used, own)


def _direct_jacobian(
    model, x: Inputs | TaskInputs, targets: Mapping[str, Tensor], shared: Sequence[tuple[str, Tensor]], keep_representation_grads: bool, task_grads: bool
) -> TaskJacobian:
    """One forward per input group and, per labelled task, one backward of its loss to the ``shared`` parameters, ``Z`` (when kept)
    and its own parameters; a task labelled nowhere in the batch gets zero rows and a NaN loss."""
    names = model.task_names
    labelled, _ = _routes(model, x, targets)
    if not labelled:
        raise ValueError(f"no task of {names} is labelled on any sample of the batch")
    representations = model.represent_groups(x)
    losses = model.losses_from_outputs(model.routed_outputs(representations, x), targets)
    own = model.task_parameters() if task_grads else {}
    zeros = [torch.zeros_like(p) for _, p in shared]
    rows, task_gradients = [], {}
    cotangents = [z.new_zeros((len(names), *z.shape)) for z in representations]
    for index, task in enumerate(names):
        if task not in losses:
            rows.append(zeros)
            task_gradients.update({name: torch.zeros_like(p) for name, p in own.get(task, [])})
            continue
        kept = representations if keep_representation_grads else []
        wanted = [p for _, p in shared] + kept + [p for _, p in own.get(task, [])]
        grads = torch.autograd.grad(losses[task], wanted, retain_graph=True, allow_unused=True, materialize_grads=True)
        rows.append(grads[: len(shared)])
        for group, g in enumerate(grads[len(shared) : len(shared) + len(kept)]):
            cotangents[group][index] = g
        task_gradients.update({name: g for (name, _), g in zip(own.get(task, []), grads[len(shared) + len(kept) :])})
    blocks = {name: torch.stack([row[i] for row in rows]) for i, (name, _) in enumerate(shared)}
    representation = (cotangents[0] if len(cotangents) == 1 else torch.cat(cotangents, dim=1)) if keep_representation_grads else None
    reference = next(iter(losses.values()))
    nan = torch.full((), torch.nan, dtype=reference.dtype, device=reference.device)
    stacked = torch.stack([losses.get(n, nan) for n in names]).detach()
    return TaskJacobian(names, blocks, stacked, representation, "direct", task_gradients if task_grads else None)


WARMUP = 1
"""Calls per strategy that ``strategy="auto"`` runs before it starts counting their times."""
TRIALS = 5
"""Counted calls per strategy that ``strategy="auto"`` times before it keeps the faster."""
LEARNING_CALLS = len(STRATEGIES) * (WARMUP + TRIALS)
"""Calls after which ``strategy="auto"`` has chosen for an encoder and input shape."""

_timings: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict]] = weakref.WeakKeyDictionary()
"""Per encoder and call signature: the seconds of each strategy's calls, and the ``"chosen"`` one once learned."""


def _signature(x: Inputs | TaskInputs, params: Sequence[tuple[str, Tensor]], n_tasks: int, *flags: bool) -> tuple:
    """What the relative speed of the strategies depends on: input shapes (of every group), device, trainable tensors, T, what is asked for."""
    groups = x.groups if isinstance(x, TaskInputs) else (x,)
    tensors = [t for group in groups for t in ([group] if isinstance(group, Tensor) else [group[k] for k in sorted(group)])]
    return (n_tasks, len(groups), tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors), tuple(n for n, _ in params), flags)


def _learned(encoder: nn.Module, signature: tuple, compute: Callable[[str], TaskJacobian]) -> TaskJacobian:
    """``compute(strategy)`` by the strategy with the lowest median time, once each has been timed ``WARMUP + TRIALS`` times.

    Until then the strategies take turns, the less-timed first; every call's own time is recorded,
    and the first ``WARMUP`` of each strategy are left out of its median.
    """
    timings = _timings.setdefault(encoder, {}).setdefault(signature, {s: [] for s in STRATEGIES})
    if "chosen" in timings:
        return compute(timings["chosen"])
    untried = [s for s in STRATEGIES if len(timings[s]) < WARMUP + TRIALS]
    if untried:
        strategy = min(untried, key=lambda s: len(timings[s]))
        device = next(encoder.parameters(), torch.empty(0)).device
        seconds, result = _timed(device, compute, strategy)
        timings[result.strategy].append(seconds)
        if result.strategy != strategy:  # no batching rule: the batched strategy fell back to the loop, never try it again
            timings[strategy] = [math.inf] * (WARMUP + TRIALS)
        return result
    timings["chosen"] = min(STRATEGIES, key=lambda s: statistics.median(timings[s][WARMUP:]))
    return compute(timings["chosen"])


def _timed(device: torch.device, compute: Callable, *args) -> tuple[float, object]:
    """``(seconds, compute(*args))``, waiting for the device's queued work at both ends."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    result = compute(*args)
    synchronize()
    return time.perf_counter() - start, result


def _vjp(output: Tensor, params: Sequence[tuple[str, Tensor]], cotangents: Tensor, strategy: str) -> tuple[dict[str, Tensor], str]:
    """``({name: (T, *p.shape)}, strategy used)``: the T vector-Jacobian products ``cotangents[t] · ∂output/∂p``.

    ``"batched"``: one vmapped backward, falling back to the loop (with a warning) where an operator
    has no batching rule; ``"loop"``: one backward per row. The graph of ``output`` is kept (the
    caller may differentiate again); it is freed with ``output``. A parameter that ``output`` does
    not reach gets zero rows.
    """
    if not params:
        raise ValueError("no parameters to differentiate with respect to (are they all frozen?)")
    names, tensors = [n for n, _ in params], [p for _, p in params]
    t = cotangents.shape[0]
    grads: Sequence[Tensor | None]
    if not output.requires_grad:
        grads = [None] * len(tensors)
    elif strategy == "batched":
        try:
            grads = torch.autograd.grad(output, tensors, grad_outputs=cotangents, is_grads_batched=True, retain_graph=True, allow_unused=True)
        except RuntimeError as error:  # an operator without a batching rule
            warnings.warn(f"batched backward unavailable ({error}); differentiating task by task", RuntimeWarning, stacklevel=3)
            return _vjp(output, params, cotangents, "loop")
    else:
        rows = [torch.autograd.grad(output, tensors, grad_outputs=cotangents[i], retain_graph=True, allow_unused=True) for i in range(t)]
        grads = [None if per_tensor[0] is None else torch.stack(per_tensor) for per_tensor in zip(*rows)]
    blocks = {
        name: torch.zeros(t, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
        for name, p, g in zip(names, tensors, grads)
    }
    return blocks, strategy
