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

from workbench.tasks import Inputs, check_finite

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
    """One encoder forward and every head on its own detached copy of ``Z``, differentiated once.

    ``z`` is the representation ``(B, ...)`` with the encoder's graph; ``losses`` ``(T,)`` (detached);
    ``cotangents`` ``(T, *Z.shape)`` holds each ``∂L_t/∂Z``; ``head_grads`` maps every trainable head
    parameter (its name in the model) to the gradient of its task's loss.
    """

    z: Tensor
    losses: Tensor
    cotangents: Tensor
    head_grads: dict[str, Tensor]


def representation_pass(model, x: Inputs, targets: Mapping[str, Tensor]) -> RepresentationPass:
    """The first stage of the engine: one forward, one backward through the heads (see the module docstring)."""
    z = model.represent(x)
    names = model.task_names
    leaves = [z.detach().requires_grad_() for _ in names]  # each head sees its own copy of Z
    losses = model.losses_from_outputs({name: model.heads[name](leaf) for name, leaf in zip(names, leaves)}, targets)
    stacked = torch.stack([losses[n] for n in names])
    heads = [(f"heads.{task}.{name}", p) for task in names for name, p in model.heads[task].named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(stacked.sum(), leaves + [p for _, p in heads], allow_unused=True, materialize_grads=True)
    cotangents = torch.stack(grads[: len(names)])
    return RepresentationPass(z, stacked.detach(), cotangents, {name: g for (name, _), g in zip(heads, grads[len(names) :])})


def encoder_vjp(
    model, x: Inputs, z: Tensor, params: Sequence[tuple[str, Tensor]], cotangents: Tensor, strategy: Literal["batched", "loop"] = "batched"
) -> tuple[dict[str, Tensor], str]:
    """The second stage: ``({name: (T, *p.shape)}, strategy used)``, the rows ``cotangents[t] · ∂Z/∂p``, batched or in a loop."""
    if strategy not in ("batched", "loop"):
        raise ValueError(f"the encoder's vector-Jacobian products are 'batched' or a 'loop', not {strategy!r}")
    return _vjp(z, params, cotangents, strategy)


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
    model, x: Inputs, targets: Mapping[str, Tensor], shared: Sequence[tuple[str, Tensor]], keep_representation_grads: bool, task_grads: bool, strategy: str
) -> TaskJacobian:
    """The representation pass, then the encoder's VJPs of the ``shared`` parameters by ``strategy`` (``"batched"`` or ``"loop"``)."""
    first = representation_pass(model, x, targets)
    resident = model.encoder_task_parameters() if task_grads else {}
    extra = [(name, p) for params in resident.values() for name, p in params]
    blocks, used = _vjp(first.z, [*shared, *extra], first.cotangents, strategy)
    own = None
    if task_grads:
        rows = {task: i for i, task in enumerate(model.task_names)}
        own = {**first.head_grads, **{name: blocks.pop(name)[rows[task]] for task, params in resident.items() for name, _ in params}}
    representation = first.cotangents if keep_representation_grads else None
    return TaskJacobian(model.task_names, blocks, first.losses, representation, used, own)


def _direct_jacobian(
    model, x: Inputs, targets: Mapping[str, Tensor], shared: Sequence[tuple[str, Tensor]], keep_representation_grads: bool, task_grads: bool
) -> TaskJacobian:
    """One forward and, per task, one backward of its loss to the ``shared`` parameters, ``Z`` (when kept) and its own parameters."""
    z = model.represent(x)
    names = model.task_names
    losses = model.losses_from_outputs(model.heads_forward(z), targets)
    own = model.task_parameters() if task_grads else {}
    rows, cotangents, task_gradients = [], [], {}
    for task in names:
        wanted = [p for _, p in shared] + ([z] if keep_representation_grads else []) + [p for _, p in own.get(task, [])]
        grads = torch.autograd.grad(losses[task], wanted, retain_graph=True, allow_unused=True, materialize_grads=True)
        rows.append(grads[: len(shared)])
        if keep_representation_grads:
            cotangents.append(grads[len(shared)])
        task_gradients.update({name: g for (name, _), g in zip(own.get(task, []), grads[len(shared) + keep_representation_grads :])})
    blocks = {name: torch.stack([row[i] for row in rows]) for i, (name, _) in enumerate(shared)}
    representation = torch.stack(cotangents) if keep_representation_grads else None
    return TaskJacobian(names, blocks, torch.stack([losses[n] for n in names]).detach(), representation, "direct", task_gradients if task_grads else None)


WARMUP = 1
"""Calls per strategy that ``strategy="auto"`` runs before it starts counting their times."""
TRIALS = 5
"""Counted calls per strategy that ``strategy="auto"`` times before it keeps the faster."""
LEARNING_CALLS = len(STRATEGIES) * (WARMUP + TRIALS)
"""Calls after which ``strategy="auto"`` has chosen for an encoder and input shape."""

_timings: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict]] = weakref.WeakKeyDictionary()
"""Per encoder and call signature: the seconds of each strategy's calls, and the ``"chosen"`` one once learned."""


def _signature(x: Inputs, params: Sequence[tuple[str, Tensor]], n_tasks: int, *flags: bool) -> tuple:
    """What the relative speed of the strategies depends on: input shapes, device, trainable tensors, T, what is asked for."""
    tensors = [x] if isinstance(x, Tensor) else [x[k] for k in sorted(x)]
    return (n_tasks, tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors), tuple(n for n, _ in params), flags)


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
