"""Representation-level task saliency (Rep-MTL, Wang et al. 2025): where in ``Z`` each task pulls.

The saliency of task ``t`` is ``S_t = ∂L_t/∂Z``, per sample, from the engine's first stage (one
forward, one backward through the heads; the encoder is never differentiated). The loss is the
batch mean, so ``S_t`` of a sample is ``1/B`` of that sample's own loss gradient; every measure here
is a ratio or a cosine, which that scale does not change. ``Z`` is named by its shape: ``(B, C)``
channels (an MLP, MiniLM's pooled vector), ``(B, C, H, W)`` channels × height × width (a CNN),
``(B, L, C)`` tokens × channels (a sequence); an encoder may name its own with a
``representation_dims`` attribute. The channels are what each position holds; the other dims are
positions.

Derived measures, all from the same ``S``:

- ``share`` ``P_{i,t} = |Ŝ_{i,t}| / Σ_k |Ŝ_{i,k}|``, ``Ŝ_t`` the channel mean of ``S_t``, at every
  position ``i`` of every sample, and its ``entropy`` ``−Σ_t P log P`` (Rep-MTL's task-specific
  saliency regulation minimises its mean, :func:`share_entropy`);
- the per-sample cross-task ``cosine`` of ``S_t`` and ``S_u``: conflict in the representation;
- the ``channel_alignment`` of the channel affinity maps ``M_t = S_t S_tᵀ`` (``C × C`` over the
  positions) of two tasks, their Frobenius cosine per sample (:func:`channel_affinity_alignment`);
  Rep-MTL's cross-task alignment (:func:`cross_task_alignment_loss`) pulls each ``M_t`` towards the
  sample's anchor ``Â = A Aᵀ``, ``A`` the positions' mean of every task's saliency (``C × T``).

:func:`input_attribution` goes back to the inputs for the pictures: gradient × input per task, on a
digit's pixels or on each word piece.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from workbench.gradients import representation_pass
from workbench.probes.isolation import leaves_model_untouched
from workbench.tasks import Inputs, TaskInputs, label_mask, num_samples

__all__ = [
    "representation_dims",
    "on_one_scale",
    "saliency_tensor",
    "task_saliency",
    "share_entropy",
    "channel_affinity_alignment",
    "cross_task_alignment_loss",
    "saliency_measures",
    "saliency_conflict",
    "input_attribution",
]

_EPS = 1e-12
_DEFAULT_DIMS = {1: ("channel",), 2: ("token", "channel"), 3: ("channel", "height", "width")}


def representation_dims(model, z: Tensor) -> tuple[str, ...]:
    """The names of ``Z``'s dims after the sample dim (see the module docstring)."""
    named = getattr(model.encoder, "representation_dims", None)
    dims = tuple(named) if named is not None else _DEFAULT_DIMS.get(z.dim() - 1)
    if dims is None or len(dims) != z.dim() - 1 or "channel" not in dims:
        raise ValueError(f"cannot name a representation of shape {tuple(z.shape)}; give the encoder a representation_dims attribute with a 'channel' dim")
    return dims


def _channels_first(saliency: Tensor, dims: Sequence[str]) -> Tensor:
    """``(T, B, *dims)`` → ``(T, B, C, P)``, P the positions flattened (1 for a vector)."""
    channel = list(dims).index("channel")
    moved = saliency.movedim(2 + channel, 2)
    return moved.reshape(*moved.shape[:3], -1)


def _check(saliency: Tensor, names: Sequence[str], labelled: Tensor) -> None:
    """Raise for a labelled task (``labelled`` ``(T,)`` bool) whose saliency is not finite or zero everywhere."""
    flat = saliency.reshape(saliency.shape[0], -1)
    finite, reached = torch.isfinite(flat).all(1).tolist(), flat.any(1).tolist()
    for name, is_finite, is_reached, is_labelled in zip(names, finite, reached, labelled.tolist()):
        if not is_labelled:
            continue
        if not is_finite:
            raise FloatingPointError(f"task {name!r} has a non-finite saliency; its loss or its head produced NaN or inf")
        if not is_reached:
            raise ValueError(f"task {name!r} has zero saliency everywhere: its loss does not reach the shared representation")


def on_one_scale(saliency: Tensor, x: Inputs | TaskInputs, targets: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """``saliency`` ``(T, B, *dims)`` with every task on the scale of a batch mean over all ``B`` samples.

    A task's loss averages over the ``n_t`` samples it is labelled on, so its saliency carries ``1/n_t``;
    on a :class:`~workbench.tasks.TaskInputs` batch the tasks' ``n_t`` differ, and the shares across
    tasks would lean towards the tasks with fewer labels. Multiplied by ``n_t / B``, each sample's
    saliency is its own loss's gradient over ``B`` for every task. A plain batch is returned as it is.
    """
    if not isinstance(x, TaskInputs):
        return saliency
    scale = torch.tensor([targets[t].shape[0] / saliency.shape[1] for t in names], dtype=saliency.dtype, device=saliency.device)
    return saliency * scale.reshape(-1, *[1] * (saliency.dim() - 1))


def saliency_tensor(model, x: Inputs, targets: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """``S`` ``(T, B, *dims)`` = ``∂L_t/∂Z``, the losses ``(T,)`` and the names of ``dims``, as tensors.

    Where a sample is not labelled for a task (a :class:`~workbench.tasks.TaskInputs` batch) its
    saliency is NaN, the others' on one scale (:func:`on_one_scale`), as is the loss of a task labelled on no sample: unmeasured, never zero. Raises,
    naming the task, when a labelled task's saliency is zero everywhere (its head does not read ``Z``)
    or not finite.
    """
    with torch.enable_grad():
        passed = representation_pass(model, x, targets)
    saliency = on_one_scale(passed.cotangents.detach(), x, targets, model.task_names)
    mask = label_mask(x, model.task_names).to(saliency.device)
    _check(saliency, model.task_names, mask.any(1))
    saliency = saliency.masked_fill(~mask.reshape(*mask.shape, *[1] * (saliency.dim() - 2)), torch.nan)
    return saliency, passed.losses, representation_dims(model, passed.representations[0])


@leaves_model_untouched
def task_saliency(model, batch: tuple[Inputs, Mapping[str, Tensor]]) -> xr.Dataset:
    """:func:`saliency_tensor` as a Dataset: ``saliency`` ``(task, sample, *dims)`` and ``loss`` ``(task)``."""
    saliency, losses, dims = saliency_tensor(model, *batch)
    ds = xr.Dataset(
        {
            "saliency": (("task", "sample", *dims), saliency.cpu().numpy()),
            "loss": ("task", losses.double().cpu().numpy()),
        },
        coords={"task": model.task_names},
    )
    ds.attrs.update(probe="task_saliency", dims=list(dims))
    return ds


def share_entropy(saliency: Tensor, dims: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Each task's share of the channel-mean saliency ``(T, B, P)`` and its entropy over tasks ``(B, P)``.

    ``saliency`` is ``(T, B, *dims)``. Differentiable: Rep-MTL's ``L_tsr`` is the entropy's mean.
    """
    magnitude = _channels_first(saliency, dims).mean(2).abs()
    share = magnitude / magnitude.sum(0, keepdim=True).clamp_min(_EPS)
    entropy = -(share * share.clamp_min(_EPS).log()).sum(0)
    return share, entropy


def _frobenius_norms(s: Tensor) -> Tensor:
    """``‖S Sᵀ‖_F = ‖Sᵀ S‖_F`` for ``s`` ``(..., C, P)``, without forming ``C × C``."""
    return (s.transpose(-1, -2) @ s).flatten(-2).norm(dim=-1)


def channel_affinity_alignment(saliency: Tensor, dims: Sequence[str]) -> Tensor:
    """``(T, T, B)``: the Frobenius cosine of the channel affinity maps ``M_t = S_t S_tᵀ`` of two tasks, per sample.

    ``⟨M_t, M_u⟩_F = ‖S_tᵀ S_u‖²_F``, so the ``C × C`` maps are never formed. In ``[0, 1]``.
    """
    s = _channels_first(saliency, dims)  # (T, B, C, P)
    inner = torch.einsum("tbcp,ubcq->tubpq", s, s).flatten(-2).pow(2).sum(-1)
    norms = _frobenius_norms(s)
    return inner / (norms[:, None] * norms[None, :]).clamp_min(_EPS)


def cross_task_alignment_loss(saliency: Tensor, dims: Sequence[str], temperature: float = 0.1) -> Tensor:
    """Rep-MTL's ``L_csa``: InfoNCE that matches each sample's task affinity maps to its own anchor.

    For sample ``b`` and task ``t`` the logits are the Frobenius cosines of ``M_{t,b}`` with every
    sample's anchor ``Â_{b'} = A_{b'} A_{b'}ᵀ`` over ``temperature``, the positive being ``b' = b``;
    ``A_b`` ``(C, T)`` is the positions' mean of the sample's saliency of every task. ``saliency`` is
    ``(T, B, *dims)``; returns a scalar, differentiable.
    """
    s = _channels_first(saliency, dims)  # (T, B, C, P)
    anchor = s.mean(-1).permute(1, 2, 0)  # (B, C, T)
    projected = torch.einsum("act,ubcp->uabtp", anchor, s)  # A_aᵀ S_{u,b}: (T, B_anchor, B, T, P)
    inner = projected.pow(2).sum((-2, -1))  # ⟨S Sᵀ, A Aᵀ⟩_F = ‖Aᵀ S‖²_F: (T, B_anchor, B)
    anchor_norms = (anchor.transpose(1, 2) @ anchor).flatten(1).norm(dim=1)  # ‖A Aᵀ‖_F = ‖Aᵀ A‖_F: (B_anchor,)
    logits = inner / (_frobenius_norms(s)[:, None, :] * anchor_norms[None, :, None]).clamp_min(_EPS) / temperature
    labels = torch.arange(s.shape[1], device=s.device).expand(s.shape[0], -1)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2).reshape(-1, s.shape[1]), labels.reshape(-1))


def _per_sample_cosine(saliency: Tensor) -> Tensor:
    """``(T, T, B)``: the cosine of two tasks' saliency of the same sample."""
    flat = saliency.flatten(2)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return torch.einsum("tbd,ubd->tub", unit, unit)


def saliency_measures(saliency: xr.Dataset) -> xr.Dataset:
    """Every derived measure of a :func:`task_saliency` result (see the module docstring).

    ``share`` ``(task, sample, *positions)``, ``entropy`` ``(sample, *positions)`` (natural log; at
    most ``log T``), ``cosine`` and ``channel_alignment`` ``(task, other_task, sample)``.
    """
    dims = tuple(saliency.attrs["dims"])
    positions = [d for d in dims if d != "channel"]
    tensor = torch.as_tensor(saliency.saliency.values, dtype=torch.float64)
    share, entropy = share_entropy(tensor, dims)
    shape = {d: saliency.sizes[d] for d in positions}
    names = saliency.task.values
    pair = {"task": names, "other_task": names}
    return xr.Dataset(
        {
            "share": (("task", "sample", *positions), share.reshape(*share.shape[:2], *shape.values()).numpy()),
            "entropy": (("sample", *positions), entropy.reshape(-1, *shape.values()).numpy()),
            "cosine": (("task", "other_task", "sample"), _per_sample_cosine(tensor).numpy()),
            "channel_alignment": (("task", "other_task", "sample"), channel_affinity_alignment(tensor, dims).numpy()),
        },
        coords=pair,
        attrs={"max_entropy": float(np.log(len(names)))},
    )


def saliency_conflict(model, batch: tuple[Inputs, Mapping[str, Tensor]]) -> xr.Dataset:
    """A compact summary for recording during training (``ProbeRecorder(saliency_conflict)``).

    ``cosine`` ``(task, other_task)``: the mean per-sample saliency cosine; ``conflict_frequency``:
    the share of samples where it is negative (of the samples labelled for both tasks; NaN when there are none); ``channel_alignment``: the mean alignment of the
    channel affinity maps; ``entropy``: the mean task-share entropy over ``log T`` (1: every position
    pulled equally by all tasks; 0: each by one task).
    """
    measures = saliency_measures(task_saliency(model, batch))
    ds = xr.Dataset(
        {
            "cosine": measures.cosine.mean("sample"),
            "conflict_frequency": (measures.cosine < 0).where(measures.cosine.notnull()).mean("sample"),
            "channel_alignment": measures.channel_alignment.mean("sample"),
            "entropy": measures.entropy.mean() / measures.attrs["max_entropy"],
        }
    )
    ds.attrs.update(probe="saliency_conflict")
    return ds


def _embedding_layer(model):
    transformer = next((module for module in model.encoder.modules() if hasattr(module, "get_input_embeddings")), None)
    if transformer is None:
        raise ValueError("inputs without a floating tensor need an encoder with input embeddings (a transformers model) to attribute to")
    return transformer.get_input_embeddings()


def _fold_copies(tensors: Sequence[Tensor], groups: Sequence[Inputs], add: bool = True) -> list[Tensor]:
    """Each group's tensor ``(k · B_g, ...)`` as ``(B_g, ...)``: the sum of its ``k`` copies (``add``), or the first copy.

    An encoder that runs the batch once per task (a scheme with adapters per task) embeds it ``k = T`` times;
    a token's embedding then reaches the losses through every copy, and its gradient is their sum."""
    folded = []
    for tensor, group in zip(tensors, groups):
        copies = tensor.shape[0] // num_samples(group)
        folded.append(tensor.unflatten(0, (copies, -1)).sum(0) if add else tensor[: num_samples(group)])
    return folded


@leaves_model_untouched
def input_attribution(model, batch: tuple[Inputs, Mapping[str, Tensor]]) -> xr.Dataset:
    """Gradient × input of every task's per-sample loss: ``attribution`` ``(task, sample, *input dims)``.

    A tensor input (a digit canvas ``(B, 1, H, W)``) is attributed pixel by pixel. Named inputs
    are attributed at their floating tensor (MiniLM's cached ``frozen_hidden``: each token's hidden
    state entering the trainable blocks) or, with token ids only, at the word-piece embeddings; both
    are summed over the hidden dim, giving ``(task, sample, token)``. A task's loss is the mean over
    the ``n_t`` samples it is labelled on, so its gradient is multiplied by ``n_t``: each sample's own
    loss. A sample not labelled for a task (a :class:`~workbench.tasks.TaskInputs` batch, whose groups'
    samples are concatenated) has NaN attribution for it.
    """
    x, targets = batch
    names = model.task_names
    groups = x.groups if isinstance(x, TaskInputs) else (x,)
    hook = None
    captured: list[Tensor] = []
    first = groups[0]
    if isinstance(first, Tensor):
        leaves = [group.detach().clone().requires_grad_() for group in groups]
        inputs, dims = leaves, tuple(f"input_dim_{i}" for i in range(1, first.dim()))
        if first.dim() == 4:
            dims = ("input_channel", "row", "column")
    else:
        floating = [k for k, v in first.items() if torch.is_floating_point(v)]
        if floating:
            leaves = [group[floating[0]].detach().clone().requires_grad_() for group in groups]
            inputs = [{**group, floating[0]: leaf} for group, leaf in zip(groups, leaves)]
        else:

            def keep(module, args, output):  # the embeddings become the leaf to attribute to
                leaf = output.detach().requires_grad_()
                captured.append(leaf)
                return leaf

            hook = _embedding_layer(model).register_forward_hook(keep)
            inputs = list(groups)
        dims = ("token",)
    inputs = TaskInputs(tuple(inputs), x.rows) if isinstance(x, TaskInputs) else inputs[0]
    try:
        with torch.enable_grad():
            losses = model.losses(inputs, targets)
            if hook is not None:
                leaves = captured
            grads = [
                torch.cat(_fold_copies(torch.autograd.grad(losses[t], leaves, retain_graph=True, allow_unused=True, materialize_grads=True), groups))
                if t in losses else torch.cat(_fold_copies([torch.full_like(leaf, torch.nan) for leaf in leaves], groups))
                for t in names
            ]
    finally:
        if hook is not None:
            hook.remove()
    leaves = _fold_copies(leaves, groups, add=False)
    leaf = torch.cat([leaf.detach() for leaf in leaves])
    labelled = torch.tensor([targets[t].shape[0] for t in names], dtype=leaf.dtype, device=leaf.device)
    attribution = torch.stack(grads) * leaf * labelled.reshape(-1, *[1] * leaf.dim())
    if dims == ("token",):
        attribution = attribution.sum(-1)
    mask = label_mask(x, names).to(attribution.device)
    attribution = attribution.masked_fill(~mask.reshape(*mask.shape, *[1] * (attribution.dim() - 2)), torch.nan)
    values = attribution.cpu().numpy()
    measured = mask.cpu().numpy().reshape(*mask.shape, *[1] * (values.ndim - 2)) & np.ones(values.shape, dtype=bool)
    if not np.isfinite(values[measured]).all():
        bad = [names[t] for t in range(len(names)) if not np.isfinite(values[t][measured[t]]).all()]
        raise FloatingPointError(f"tasks {bad} have non-finite input attribution")
    ds = xr.Dataset({"attribution": (("task", "sample", *dims), values)}, coords={"task": names})
    ds.attrs.update(probe="input_attribution")
    return ds
