"""What every streamed merge shares: its inputs opened and checked, its fixed tensors, and its output written as it is made.

:func:`open_inputs` opens the base and the models (files, model folders, state dicts or modules; model folders'
``config.json`` compared first, :func:`~workbench.weights.model_folder.check_model_folders`) and plans every tensor
(:func:`~workbench.weights.state_dicts.plan`). :func:`fixed_tensor` gives a tensor that is not merged (taken from the
base, or a non-floating buffer every input holds alike). :func:`emit` returns the merged tensors as a state dict, or
writes them as they come to a safetensors file (``out`` ending in ``.safetensors``) or a model folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from workbench.weights.model_folder import DEFAULT_SHARD_BYTES, check_model_folders, is_model_folder, write_model_folder
from workbench.weights.state_dicts import Source, TensorPlan, Weights, equal_buffer, open_task_weights, open_weights, plan, write_safetensors

__all__ = ["MergeInputs", "open_inputs", "fixed_tensor", "all_finite", "as_output", "emit"]


@dataclass(frozen=True)
class MergeInputs:
    """The opened inputs of a merge: the models' ``names`` and ``checkpoints``, the ``base`` (or ``None``) and each tensor's plan."""

    names: list[str]
    checkpoints: list[Weights]
    base: Weights | None
    plans: list[TensorPlan]

    def out_plans(self, dtype: torch.dtype | None) -> list[TensorPlan]:
        """The plans of the output: the merged tensors in ``dtype`` (``None``: their own), the others as they are."""
        return [dataclasses.replace(p, dtype=dtype) if dtype is not None and p.action == "merge" else p for p in self.plans]

    @property
    def inputs(self) -> list[Weights]:
        """The base (when there is one), then the models."""
        return ([self.base] if self.base is not None else []) + self.checkpoints

    def bytes_read(self, reads_base: bool = True) -> list[int]:
        """Per plan, the bytes a merge reads for that tensor: every model's (and, when ``reads_base``, the base's) for a
        merged tensor, one copy's for a tensor taken as it is."""
        readers = len(self.checkpoints) + (reads_base and self.base is not None)
        return [p.nbytes * (readers if p.action == "merge" else 1) for p in self.plans]

    def tensors_of(self, name: str) -> list[Tensor]:
        """Every model's tensor ``name``, the base's where a model lacks it (``strict=False``)."""
        return [checkpoint[name] if name in checkpoint else self.base[name] for checkpoint in self.checkpoints]

    def check_finite(self, names: Sequence[str]) -> None:
        """Refuse the inputs when any holds NaN or infinite values in the tensors ``names``, naming the inputs and tensors."""
        bad = {}
        for checkpoint in self.inputs:
            found = [name for name in names if name in checkpoint and not bool(torch.isfinite(checkpoint[name]).all())]
            if found:
                bad[checkpoint.name] = found
        if bad:
            raise ValueError(f"NaN or infinite values in the inputs, by input and tensor: {bad}; nothing was written")


def _is_folder(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and is_model_folder(source)


def open_inputs(base: Source | Weights | None, models: Sequence[Source | Weights] | Mapping[str, Source | Weights], strict: bool = True) -> MergeInputs:
    """Open and check the inputs (see the module docstring); without a base, the first model names the tensors."""
    named = dict(models) if isinstance(models, Mapping) else {Path(m).name if isinstance(m, (str, os.PathLike)) else str(i): m for i, m in enumerate(models)}
    if named and all(_is_folder(m) for m in named.values()):
        if base is None:
            check_model_folders(next(iter(named.values())), dict(list(named.items())[1:]))
        elif _is_folder(base):
            check_model_folders(base, named)
    names, checkpoints = open_task_weights(models)
    base_checkpoint = open_weights(base, "base") if base is not None else None
    return MergeInputs(names, checkpoints, base_checkpoint, plan(checkpoints, base_checkpoint, strict))


def fixed_tensor(p: TensorPlan, inputs: MergeInputs) -> Tensor:
    """A tensor the merge does not compute: the base's (``"copy"``: refused when not finite) or a buffer every input holds alike."""
    if p.action == "copy":
        tensor = inputs.base[p.name]
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ValueError(f"tensor {p.name!r}, taken unchanged from {inputs.base.name}, holds NaN or infinite values; nothing was written")
        return tensor
    return equal_buffer(p.name, inputs.inputs)


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry of the floating ``tensor`` is finite: its sum first (a finite sum means every entry is), entry
    by entry only when the sum is not finite (a sum that merely overflowed)."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def as_output(name: str, tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """The merged tensor ``name`` (finite) in the output ``dtype``, refused when its values lie beyond that dtype's range."""
    if tensor.dtype == dtype:
        return tensor
    converted = tensor.to(dtype)
    if converted.is_floating_point() and not all_finite(converted):
        raise ValueError(
            f"merging tensor {name!r} gave values beyond the range of {dtype} (largest magnitude {tensor.abs().max().item():.4g}, "
            f"finite in {tensor.dtype}); nothing was written: write the merge in a wider dtype (out_dtype=torch.float32)"
        )
    return converted


def emit(
    plans: Sequence[TensorPlan], tensors: Iterable[Tensor], out: str | os.PathLike | None, metadata: Mapping[str, str], *,
    like: str | os.PathLike | None = None, base: Source | Weights | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Tensor] | Path:
    """The merged state dict (``out=None``), or ``tensors`` written to ``out`` as they come and its path: a safetensors file
    when ``out`` ends in ``.safetensors``, else a model folder with the non-weight files of ``like`` (by default ``base``,
    when it is a model folder)."""
    if out is None:
        return {p.name: tensor for p, tensor in zip(plans, tensors)}
    if Path(out).suffix == ".safetensors":
        return write_safetensors(out, plans, tensors, metadata)
    if like is None and _is_folder(base):
        like = base
    return write_model_folder(out, plans, tensors, like=like, max_shard_bytes=max_shard_bytes, metadata=metadata)
