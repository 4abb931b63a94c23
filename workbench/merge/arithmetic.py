"""One generalised task-arithmetic merge; weight averaging, task arithmetic, TIES, DARE and DARE-TIES are presets of it.

For T fine-tuned checkpoints θ_t of a base θ_0, with task vectors τ_t = θ_t − θ_0, tensor by tensor:

1. DARE dropping (``drop`` = p > 0): each entry of τ_t is zeroed with probability p, and the kept ones
   are rescaled by 1/(1 − p) (``rescale="inverse"``, the paper) or so that the tensor keeps its L1
   norm (``rescale="l1"``, mergekit). The masks come from one ``torch.Generator`` seeded with
   ``seed``, drawn tensor by tensor in the checkpoint's order and task by task.
2. Trimming (``density`` = k < 1): τ_t keeps its top-k fraction of entries by magnitude, per tensor
   (``trim="tensor"``, mergekit: exactly max(1, ⌊k n⌋) entries) or over the whole model
   (``trim="model"``, the TIES paper: the entries whose magnitude reaches τ_t's model-wide
   ⌊k P⌋-th largest magnitude).
3. Scaling: τ_t is multiplied by its weight w_t: one per task, or one per task and tensor (aTLAS).
4. Sign election (``elect_sign``, TIES): per coordinate the sign of Σ_t w_t τ̂_t (0 counts as +);
   only the entries with that sign contribute.
5. Combining: ``combine="sum"`` adds the contributions; ``"mean"`` divides them by the sum of the
   contributing tasks' weights (the disjoint mean with sign election, Σ_t w_t τ_t / Σ_t w_t without;
   a zero divisor counts as 1).
6. θ = θ_0 + λ · merged.

Without a base, θ_0 = 0, so that weight averaging (``combine="mean"``) merges the models themselves.
A merge holds one tensor of every checkpoint at a time, except that model-wide trimming first finds
each task's threshold in one pass per task, holding ⌊k P⌋ float32 magnitudes (P: merged entries).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from workbench.merge.sources import Checkpoint, Source, equal_buffer, open_checkpoint, open_checkpoints, plan, write_safetensors
from workbench.progress import progress as progress_bar

__all__ = ["MergeOptions", "PRESETS", "preset", "merge", "merge_tensor", "model_thresholds", "task_vectors", "trim_top_k"]


@dataclass(frozen=True)
class MergeOptions:
    """The options of the generalised merge (see the module docstring for what each does).

    ``weights``: ``None`` (1 for every task), a sequence of T floats, or a mapping from every merged
    tensor's name to a sequence of T floats (per task and tensor, as in aTLAS).
    """

    lam: float = 1.0
    weights: Sequence[float] | Mapping[str, Sequence[float]] | None = None
    density: float = 1.0
    trim: Literal["tensor", "model"] = "tensor"
    drop: float = 0.0
    rescale: Literal["inverse", "l1"] = "inverse"
    elect_sign: bool = False
    combine: Literal["sum", "mean"] = "sum"
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if not 0 <= self.drop < 1:
            raise ValueError(f"drop must be in [0, 1), got {self.drop}")
        for option, value, allowed in (("trim", self.trim, ("tensor", "model")), ("rescale", self.rescale, ("inverse", "l1")), ("combine", self.combine, ("sum", "mean"))):
            if value not in allowed:
                raise ValueError(f"{option} must be one of {allowed}, got {value!r}")
        if self.trim == "model" and self.density < 1 and self.drop > 0:
            raise ValueError("model-wide trimming after DARE dropping is not supported (the threshold would need the dropped vectors); use trim='tensor'")

    def task_weights(self, name: str, n_tasks: int) -> Tensor:
        """w_t for tensor ``name``: shape (T,), float64."""
        weights = self.weights
        if isinstance(weights, Mapping):
            if name not in weights:
                raise ValueError(f"the per-tensor weights name no weights for tensor {name!r}")
            weights = weights[name]
        if weights is None:
            return torch.ones(n_tasks, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n_tasks,):
            raise ValueError(f"tensor {name!r}: {weights.numel()} weights for {n_tasks} tasks")
        return weights


PRESETS: dict[str, MergeOptions] = {
    # θ = mean_t θ_t
    "average": MergeOptions(combine="mean"),
    # θ = θ_0 + λ Σ_t τ_t, λ = 0.3 as in FusionBench / AdaMerging
    "task_arithmetic": MergeOptions(lam=0.3),
    # the TIES paper: top 20% over the whole model, elected sign, disjoint mean, λ = 1
    "ties": MergeOptions(density=0.2, trim="model", elect_sign=True, combine="mean"),
    # DARE (drop half, rescale by 2) then task arithmetic with λ = 0.3
    "dare": MergeOptions(drop=0.5, lam=0.3),
    # DARE then sign election and the disjoint sum with λ = 0.3 (FusionBench's TIES setting)
    "dare_ties": MergeOptions(drop=0.5, elect_sign=True, lam=0.3),
}


def preset(name: str, **changes) -> MergeOptions:
    """The options of preset ``name`` (one of :data:`PRESETS`) with ``changes`` applied, e.g. ``preset("ties", trim="tensor")``."""
    if name not in PRESETS:
        raise ValueError(f"unknown merge preset {name!r}; the presets are {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **changes)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def task_vectors(base: Tensor | None, tasks: Sequence[Tensor]) -> Tensor:
    """τ stacked: shape (T, *tensor shape), float32 (float64 for float64 inputs); θ_0 = 0 without a base."""
    dtype = _work_dtype(tasks[0].dtype)
    stacked = torch.stack([t.to(dtype) for t in tasks])
    return stacked - base.to(dtype) if base is not None else stacked


def _drop(tau: Tensor, p: float, rescale: str, generator: torch.Generator) -> Tensor:
    keep = torch.rand(tau.shape, generator=generator, dtype=tau.dtype) >= p
    dropped = tau * keep
    if rescale == "inverse":
        return dropped / (1 - p)
    before = tau.abs().flatten(1).sum(1)
    after = dropped.abs().flatten(1).sum(1)
    scale = torch.where((before < 1e-7) | (after < 1e-7), torch.ones_like(before), before / after.clamp_min(1e-7))
    return dropped * scale.view(-1, *[1] * (tau.dim() - 1))


def trim_top_k(tau: Tensor, density: float) -> Tensor:
    """Each row τ_t of ``tau`` (shape (T, ...)) with all but its max(1, ⌊density · n⌋) largest magnitudes zeroed."""
    flat = tau.reshape(len(tau), -1)
    k = max(1, int(density * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    return (flat * mask).reshape(tau.shape)


def merge_tensor(
    base: Tensor | None,
    tasks: Sequence[Tensor],
    options: MergeOptions,
    weights: Tensor | None = None,
    thresholds: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Merge one tensor: ``base`` and each of ``tasks`` have the same shape; returns that shape in float32 (float64 stays).

    ``weights``: w_t, shape (T,) (default: ones). ``thresholds``: shape (T,), each task's model-wide
    magnitude threshold (from :func:`model_thresholds`), needed when ``options.trim == "model"`` and
    ``options.density < 1``. ``generator`` draws the DARE masks (default: seeded with ``options.seed``).
    """
    if options.drop == 0 and options.density == 1 and not options.elect_sign:
        return _weighted_sum(base, tasks, options, weights)
    tau = task_vectors(base, tasks)
    expand = (-1,) + (1,) * (tau.dim() - 1)
    if options.drop > 0:
        generator = generator if generator is not None else torch.Generator().manual_seed(options.seed)
        tau = _drop(tau, options.drop, options.rescale, generator)
    if options.density < 1:
        if options.trim == "tensor":
            tau = trim_top_k(tau, options.density)
        elif thresholds is None:
            raise ValueError("model-wide trimming needs each task's threshold (model_thresholds)")
        else:
            tau = tau * (tau.abs() >= thresholds.to(tau.dtype).view(expand))
    w = (weights if weights is not None else torch.ones(len(tau))).to(tau.dtype).view(expand)
    tau = tau * w
    if options.elect_sign:
        elected = torch.where(tau.sum(0) >= 0, 1.0, -1.0).to(tau.dtype)
        agree = tau.sign() == elected
        merged = (tau * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        merged = tau.sum(0)
        divisor = w.sum()
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    if options.combine == "mean":
        merged = merged / divisor
    start = base.to(tau.dtype) if base is not None else torch.zeros_like(merged)
    return start + options.lam * merged


def _weighted_sum(base: Tensor | None, tasks: Sequence[Tensor], options: MergeOptions, weights: Tensor | None) -> Tensor:
    """θ_0 + λ Σ_t w_t τ_t (divided by Σ_t w_t for ``combine="mean"``), one task at a time, without stacking the τ_t."""
    dtype = _work_dtype(tasks[0].dtype)
    w = (weights if weights is not None else torch.ones(len(tasks), dtype=torch.float64)).tolist()
    start = base.to(dtype) if base is not None else None
    merged = torch.zeros(tasks[0].shape, dtype=dtype)
    for task, w_t in zip(tasks, w):
        merged.add_(task.to(dtype) - start if start is not None else task.to(dtype), alpha=w_t)
    if options.combine == "mean":
        total = sum(w)
        merged.div_(total if abs(total) >= 1e-8 else 1.0)
    merged.mul_(options.lam)
    return merged.add_(start) if start is not None else merged


def model_thresholds(base: Checkpoint, tasks: Sequence[Checkpoint], names: Sequence[str], density: float, progress: bool = False) -> Tensor:
    """Each task's ⌊density · P⌋-th largest |τ_t| over the tensors ``names`` (P entries in all): shape (T,), float32.

    One pass over the tensors per task, holding ⌊density · P⌋ float32 magnitudes.
    """
    total = sum(torch.Size(base.spec(name)[0]).numel() for name in names)
    k = max(1, int(density * total))
    thresholds = []
    for task in progress_bar(tasks, "model-wide thresholds", enabled=progress, leave=False):
        kept = torch.empty(0)
        for name in names:
            magnitudes = (task[name].float() - base[name].float()).abs().reshape(-1)
            pool = torch.cat([kept, magnitudes])
            kept = pool.topk(min(k, len(pool)), sorted=False).values
        thresholds.append(kept.min())
    return torch.stack(thresholds)


def merge(
    models: Sequence[Source] | Mapping[str, Source],
    base: Source | None = None,
    options: MergeOptions | str = "task_arithmetic",
    *,
    strict: bool = True,
    out: str | os.PathLike | None = None,
    out_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict[str, Tensor] | Path:
    """Merge fine-tuned ``models`` of ``base`` with ``options`` (a :class:`MergeOptions` or a preset's name).

    Checkpoints are read and merged one tensor at a time (the rules for keys, shapes, dtypes and
    non-floating tensors are in :mod:`workbench.merge.sources`). Merged tensors are written in their
    input dtype, or ``out_dtype``. Returns the merged state dict, or, with ``out``, writes it to that
    safetensors file as it is made (atomically) and returns the path.
    """
    options = preset(options) if isinstance(options, str) else options
    if base is None and (options.density < 1 or options.drop > 0 or options.elect_sign):
        raise ValueError("trimming, dropping and sign election act on task vectors, which need a base model")
    names, checkpoints = open_checkpoints(models)
    base_checkpoint = open_checkpoint(base, "base") if base is not None else None
    plans = plan(checkpoints, base_checkpoint, strict)
    merged_names = [p.name for p in plans if p.action == "merge"]
    thresholds = None
    if options.density < 1 and options.trim == "model":
        thresholds = model_thresholds(base_checkpoint, checkpoints, merged_names, options.density, progress)
    generator = torch.Generator().manual_seed(options.seed)
    out_plans = [dataclasses.replace(p, dtype=out_dtype) if out_dtype is not None and p.action == "merge" else p for p in plans]

    def tensors() -> Iterator[Tensor]:
        for p, out_plan in zip(progress_bar(plans, "merge", enabled=progress, leave=False), out_plans):
            if p.action == "copy":
                yield base_checkpoint[p.name]
            elif p.action == "buffer":
                yield equal_buffer(p.name, ([base_checkpoint] if base_checkpoint else []) + checkpoints)
            else:
                base_tensor = base_checkpoint[p.name] if base_checkpoint else None
                weights = options.task_weights(p.name, len(checkpoints))
                merged = merge_tensor(base_tensor, [c[p.name] for c in checkpoints], options, weights, thresholds, generator)
                yield merged.to(out_plan.dtype)

    if out is None:
        return {p.name: tensor for p, tensor in zip(plans, tensors())}
    metadata = {"merged": ",".join(names), "options": repr(options)}
    return write_safetensors(out, out_plans, tensors(), metadata)
