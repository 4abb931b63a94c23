"""One generalised task-arithmetic merge; weight averaging, task arithmetic, TIES, DARE and DARE-TIES are presets of it
(:mod:`workbench.merge.presets`).

For T fine-tuned checkpoints θ_t of a base θ_0, with task vectors τ_t = θ_t − θ_0, tensor by tensor:

1. DARE dropping (``drop`` = p > 0): each entry of τ_t is zeroed with probability p, and the kept ones
   are rescaled by 1/(1 − p) (``rescale="inverse"``, the paper) or so that the tensor keeps its L1
   norm (``rescale="l1"``, mergekit). The mask of task t on tensor ``name`` comes from NumPy's PCG64
   seeded with ``SeedSequence([seed, crc32(name), t])``: its output read as little-endian 16-bit
   words, one per entry in the flattened tensor's order, an entry dropped when its word is below
   round(65536 p). So p acts rounded to a multiple of 1/65536 (the rescaling uses the rounded p), and a
   tensor's masks do not depend on the other tensors or their order.
2. Trimming (``density`` = k < 1; not together with dropping, which replaces it): τ_t keeps the
   entries whose magnitude reaches its ⌊k n⌋-th largest (at least the first), over each tensor
   (``trim="tensor"``, as mergekit) or over the whole model (``trim="model"``, the TIES paper). When
   several magnitudes tie at that place all of them are kept (mergekit keeps an arbitrary subset).
3. Scaling: τ_t is multiplied by its weight w_t: one per task, or one per task and tensor (aTLAS).
4. Sign election (``elect_sign``, TIES): per coordinate the sign of Σ_t w_t τ̂_t (0 counts as +);
   only the entries with that sign contribute.
5. Combining: ``combine="sum"`` adds the contributions; ``"mean"`` divides them by the sum of the
   contributing tasks' weights (the disjoint mean with sign election, Σ_t w_t τ_t / Σ_t w_t without;
   a zero divisor counts as 1).
6. θ = θ_0 + λ · merged.

Without a base, θ_0 = 0, so that weight averaging (``combine="mean"``) merges the models themselves.

Memory: a merge holds the merged tensor being made and T chunks of 2^16 entries of the inputs
(:func:`~workbench.weights.task_vectors.task_vector_chunks`); safetensors inputs are read with positioned reads,
so the files are never mapped whole. Trimming finds its thresholds first (one more pass over each
tensor, or over the model for ``trim="model"``, holding about 3% of the entries it looks at; see
:func:`~workbench.weights.task_vectors.magnitude_thresholds`), and L1 rescaling one more pass per tensor.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from workbench.weights.state_dicts import MemoryWeights, Source, Weights
from workbench.merge.streaming import all_finite, emit, fixed_tensor, open_inputs
from workbench.weights.model_folder import DEFAULT_SHARD_BYTES
from workbench.weights.task_vectors import magnitude_thresholds, streaming_threads, task_vector_chunks, work_dtype
from workbench.progress import progress_bytes

__all__ = ["MergeOptions", "merge_task_vectors", "merge_tensor", "combine_task_vectors", "elected_sign", "apply_combined"]


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
        if self.density < 1 and self.drop > 0:
            raise ValueError("DARE's random dropping replaces magnitude trimming: give drop with density=1, or density with drop=0")

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


def _dare_generators(seed: int, name: str, n_tasks: int) -> list[np.random.PCG64]:
    """One bit generator per task for the DARE masks of tensor ``name``."""
    key = zlib.crc32(name.encode())
    return [np.random.PCG64(np.random.SeedSequence([seed, key, t])) for t in range(n_tasks)]


def _keep_masks(generators: Sequence[np.random.PCG64], drop: float, out: Tensor) -> Tensor:
    """Fill ``out`` (shape (T, c)) with 1 where an entry is kept and 0 where DARE drops it: the next c 16-bit words of each task's generator."""
    cutoff = round(drop * 65536)  # a word below this drops its entry
    c = out.shape[1]
    for row, generator in zip(out, generators):
        row.copy_(torch.from_numpy(generator.random_raw((c + 3) // 4).astype("<u8", copy=False).view("<u2")[:c]))
    return out.sub_(cutoff - 0.5).relu_().sign_()


def _effective_drop(drop: float) -> float:
    """The drop probability the 16-bit draws realise: ``drop`` rounded to a multiple of 1/65536."""
    return round(drop * 65536) / 65536


def _l1_scales(base: Weights | None, tasks: Sequence[Weights], name: str, options: MergeOptions) -> Tensor:
    """Per task, ‖τ_t‖₁ / ‖DARE-dropped τ_t‖₁ over tensor ``name`` (1 where either is below 1e-7): shape (T, 1)."""
    generators = _dare_generators(options.seed, name, len(tasks))
    before = torch.zeros(len(tasks), dtype=torch.float64)
    after = torch.zeros(len(tasks), dtype=torch.float64)
    for _, _, _, tau in task_vector_chunks(base, tasks, name):
        magnitude = tau.abs()
        before += magnitude.sum(1)
        after += (magnitude * _keep_masks(generators, options.drop, torch.empty_like(tau))).sum(1)
    scale = torch.where((before < 1e-7) | (after < 1e-7), torch.ones_like(before), before / after.clamp_min(1e-7))
    return scale.view(-1, 1)


def elected_sign(tau: Tensor) -> Tensor:
    """TIES' elected sign of the task vectors ``tau`` ``(T, *shape)``: the sign of their sum, 0 counting as +; ``(*shape)``."""
    return tau.sum(0).sign_().add_(0.5).sign_()


def combine_task_vectors(tau: Tensor, weights: Tensor, options: MergeOptions, thresholds: Tensor | None, scratch: Tensor) -> Tensor:
    """The merged task vector of one chunk: ``tau`` (T, c), DARE-dropped already, is trimmed and weighted in place; returns shape (c,).

    ``weights``: w_t, shape (T, 1); ``thresholds``: trimming thresholds, shape (T, 1), or None;
    ``scratch``: a buffer shaped like ``tau``.
    """
    if thresholds is not None:  # keep |τ| ≥ threshold: sign(sign(|τ| − threshold) + 1) is 1 there and 0 below
        tau.mul_(torch.abs(tau, out=scratch).sub_(thresholds).sign_().add_(1).sign_())
    if not options.elect_sign:
        merged = (weights.T @ tau).squeeze(0)
        total = float(weights.sum())
        return merged.div_(total if abs(total) >= 1e-8 else 1.0) if options.combine == "mean" else merged
    tau.mul_(weights)
    elected = elected_sign(tau)  # the sign of Σ_t w_t τ_t
    agreeing = torch.mul(tau, elected, out=scratch).relu_()  # |contribution| where the entry has the elected sign, else 0
    merged = agreeing.sum(0).mul_(elected)
    if options.combine == "mean":
        divisor = (weights.T @ agreeing.sign_()).squeeze(0)
        merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
    return merged


def apply_combined(base: Tensor, tau: Tensor, weights: Sequence[float] | None, lam: float, options: MergeOptions) -> Tensor:
    """θ_0 + λ · :func:`combine_task_vectors` of one tensor's task vectors ``tau`` ``(T, n)``, sparsified already (and
    changed in place), with ``weights`` (T numbers, or ``None``: 1 each); ``base`` ``(*shape)``, the result its shape."""
    count = tau.shape[0]
    w = torch.ones(count, 1, dtype=tau.dtype) if weights is None else torch.as_tensor(weights, dtype=tau.dtype).reshape(-1, 1)
    if w.shape[0] != count:
        raise ValueError(f"{w.shape[0]} weights for {count} models")
    merged = combine_task_vectors(tau, w, options, None, torch.empty_like(tau))
    return base + lam * merged.reshape(base.shape)


def _merge_key(
    base: Weights | None,
    tasks: Sequence[Weights],
    name: str,
    options: MergeOptions,
    weights: Tensor,
    thresholds: Tensor | None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Tensor ``name`` merged chunk by chunk, in ``dtype`` (default: the work dtype); ``weights`` shape (T,), ``thresholds`` (T,) or None."""
    with streaming_threads([base, *tasks]):  # thresholds, L1 scales and the merge read the inputs alike
        shape, stored = tasks[0].spec(name)
        work = work_dtype(stored)
        if options.density < 1 and options.trim == "tensor":
            thresholds = magnitude_thresholds(base, tasks, [name], options.density)
        elif options.density < 1 and thresholds is None:
            raise ValueError("model-wide trimming needs each task's threshold (magnitude_thresholds over the model)")
        thresholds = thresholds.to(work).view(-1, 1) if options.density < 1 else None
        weights = weights.to(work).view(-1, 1)
        if options.drop > 0:
            generators = _dare_generators(options.seed, name, len(tasks))
            drop = _effective_drop(options.drop)
            rescale = _l1_scales(base, tasks, name, options).to(work) if options.rescale == "l1" else torch.full((len(tasks), 1), 1 / (1 - drop), dtype=work)
        result = torch.empty(tasks[0].numel(name), dtype=dtype or work)
        scratch = None
        for start, stop, theta0, tau in task_vector_chunks(base, tasks, name):
            if scratch is None or scratch.shape != tau.shape:
                scratch = torch.empty_like(tau)
            if options.drop > 0:
                tau.mul_(_keep_masks(generators, options.drop, scratch)).mul_(rescale)
            merged = combine_task_vectors(tau, weights, options, thresholds, scratch).mul_(options.lam)
            merged = merged.add_(theta0) if theta0 is not None else merged
            if not all_finite(merged):
                raise _non_finite(name, ([base] if base is not None else []) + list(tasks), start, stop)
            result[start:stop] = merged
            if result.dtype != merged.dtype and not all_finite(result[start:stop]):  # finite in the work dtype, beyond the output's range
                raise ValueError(
                    f"merging tensor {name!r} gave values beyond the range of {result.dtype} at entries {start}..{stop - 1} "
                    f"(largest magnitude {merged.abs().max().item():.4g}, finite in {merged.dtype}); "
                    f"nothing was written: write the merge in a wider dtype (out_dtype=torch.float32)"
                )
        return result.reshape(shape)


def _non_finite(name: str, checkpoints: Sequence[Weights], start: int, stop: int) -> ValueError:
    """The error for a merged chunk with NaN or infinite entries, naming the checkpoints whose inputs there are not finite."""
    culprits = [c.name for c in checkpoints if c.spec(name)[1].is_floating_point and not bool(torch.isfinite(c.read(name, start, stop)).all())]
    where = f"{culprits} hold NaN or infinite entries there" if culprits else "every input is finite there, so the merge overflowed"
    return ValueError(f"merging tensor {name!r} gave non-finite values at entries {start}..{stop - 1}: {where}; nothing was written")


def merge_tensor(
    base: Tensor | None,
    tasks: Sequence[Tensor],
    options: MergeOptions,
    weights: Tensor | None = None,
    thresholds: Tensor | None = None,
    name: str = "tensor",
) -> Tensor:
    """Merge one tensor: ``base`` and each of ``tasks`` have the same shape; returns that shape in float32 (float64 stays).

    ``weights``: w_t, shape (T,) (default: ones). ``thresholds``: shape (T,), each task's model-wide
    magnitude threshold (from :func:`~workbench.weights.task_vectors.magnitude_thresholds`), needed when
    ``options.trim == "model"`` and ``options.density < 1``. ``name`` seeds the DARE masks, which are
    those a merge of checkpoints draws for the tensor of that name.
    """
    task_checkpoints = [MemoryWeights(f"task {t}", {name: tensor}) for t, tensor in enumerate(tasks)]
    base_checkpoint = MemoryWeights("base", {name: base}) if base is not None else None
    weights = weights if weights is not None else torch.ones(len(tasks), dtype=torch.float64)
    return _merge_key(base_checkpoint, task_checkpoints, name, options, weights, thresholds)


def merge_task_vectors(
    base: Source | Weights | None,
    models: Sequence[Source | Weights] | Mapping[str, Source | Weights],
    options: MergeOptions,
    *,
    strict: bool = True,
    out: str | os.PathLike | None = None,
    out_dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    like: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Tensor] | Path:
    """Merge fine-tuned ``models`` of ``base`` (``None``: θ_0 = 0) with ``options``, streamed tensor by tensor.

    Checkpoints are read and merged one tensor at a time (the rules for keys, shapes, dtypes and
    non-floating tensors are in :mod:`workbench.weights.state_dicts`). Merged tensors are written in their
    input dtype, or ``out_dtype``. Returns the merged state dict, or, with ``out``, writes it as it is made
    (atomically) and returns the path: to that safetensors file when ``out`` ends in ``.safetensors``, else as a
    model folder of shards up to ``max_shard_bytes`` (:func:`~workbench.weights.model_folder.write_model_folder`)
    with the configuration and tokenizer of the model folder ``like`` (by default the base, when it is a model folder). When every model
    and the base (without one: the first model) are model folders, their ``config.json`` are compared first
    (:func:`~workbench.weights.model_folder.check_model_folders`).
    """
    if base is None and (options.density < 1 or options.drop > 0 or options.elect_sign):
        raise ValueError("trimming, dropping and sign election act on task vectors, which need a base model")
    inputs = open_inputs(base, models, strict)
    names, checkpoints, base_checkpoint, plans = inputs.names, inputs.checkpoints, inputs.base, inputs.plans
    merged_names = [p.name for p in plans if p.action == "merge"]
    thresholds = None
    if options.density < 1 and options.trim == "model":
        with streaming_threads([base_checkpoint, *checkpoints]):
            thresholds = magnitude_thresholds(base_checkpoint, checkpoints, merged_names, options.density)
    out_plans = inputs.out_plans(out_dtype)

    def tensors() -> Iterator[Tensor]:
        for p, out_plan in zip(progress_bytes(plans, inputs.bytes_read(), "merge", enabled=progress, leave=False), out_plans):
            if p.action == "merge":
                weights = options.task_weights(p.name, len(checkpoints))
                yield _merge_key(base_checkpoint, checkpoints, p.name, options, weights, thresholds, out_plan.dtype)
            else:
                yield fixed_tensor(p, inputs)

    metadata = {"merged": ",".join(names), "options": repr(options)}
    return emit(out_plans, tensors(), out, metadata, like=like, base=base, max_shard_bytes=max_shard_bytes)
