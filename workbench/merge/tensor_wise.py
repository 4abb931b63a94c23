"""Merges defined tensor by tensor: a rule maps one tensor of the base and of every model to the merged tensor.

A rule is ``rule(base, tensors, **options) -> merged``: ``base`` the base's tensor (``None`` for a rule that reads no
base) and ``tensors`` the models' ``(T, *shape)``, both in the work dtype (float32; float64 stays), ``merged``
``(*shape)``; ``tensors`` is a new tensor the rule may change in place. A rule with a keyword-only ``name`` parameter
is given the tensor's name (DELLA seeds its draws by it). Its ``models`` attribute, ``(fewest, most)`` (``most`` ``None``: any number), says how many models it
merges. :func:`merge_tensor_wise` streams a rule over files, folders, state dicts or modules, one tensor at a time
(holding that tensor of every input, the merged one and the rule's work on it), and returns or writes the result as
:func:`~workbench.merge.streaming.emit` does; :func:`as_tensor_merge` makes a rule a registered merge. Non-floating
tensors are copied when every input holds them alike, as in the generalised core.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.merge.method import MergeData, Merged, TaskModel, merge_signature
from workbench.merge.streaming import MergeInputs, all_finite, as_output, emit, fixed_tensor, open_inputs
from workbench.progress import progress_bytes
from workbench.weights.model_folder import DEFAULT_SHARD_BYTES
from workbench.weights.state_dicts import Source, Weights
from workbench.weights.task_vectors import work_dtype

__all__ = ["TensorRule", "merge_tensor_wise", "as_tensor_merge", "model_count"]

TensorRule = Callable[..., Tensor]


def model_count(rule: TensorRule) -> tuple[int, int | None]:
    """``(fewest, most)`` models the rule merges (``most`` ``None``: any number)."""
    return getattr(rule, "models", (1, None))


def _check_count(rule: TensorRule, names: Sequence[str]) -> None:
    fewest, most = model_count(rule)
    if len(names) < fewest or (most is not None and len(names) > most):
        wanted = f"exactly {fewest}" if fewest == most else f"at least {fewest}" if most is None else f"{fewest} to {most}"
        raise ValueError(f"{rule.__name__} merges {wanted} model{'s' if most != 1 else ''} beside the base; got {len(names)}: {list(names)}")


def _check_finite(name: str, stacked: Tensor, theta0: Tensor | None, inputs: MergeInputs) -> None:
    """Refuse tensor ``name`` when an input holds NaN or infinite values there, naming the inputs. The sums are a fast
    first test (a finite sum means every entry is finite); only a non-finite one looks entry by entry, and a sum that
    merely overflowed passes."""
    if not (all_finite(stacked) and (theta0 is None or all_finite(theta0))):
        inputs.check_finite([name])


def _takes_name(rule: TensorRule) -> bool:
    parameter = inspect.signature(rule).parameters.get("name")
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def merge_tensor_wise(
    base: Source | Weights | None, models: Sequence[Source | Weights] | Mapping[str, Source | Weights], rule: TensorRule,
    options: Mapping[str, Any] | None = None, *, uses_base: bool = True, strict: bool = True, out: str | os.PathLike | None = None,
    out_dtype: torch.dtype | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES, like: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Tensor] | Path:
    """``rule`` with ``options`` on every floating tensor of the inputs (see the module docstring); the base names the
    tensors (without one, the first model) and, when ``uses_base``, is the rule's ``base``. Merged tensors keep their
    dtype, or take ``out_dtype``; a non-finite input is refused naming it and the tensor (a rule such as MagMax would
    pass over it), and so is a non-finite result."""
    options = dict(options or {})
    inputs = open_inputs(base, models, strict)
    _check_count(rule, inputs.names)
    if uses_base and inputs.base is None:
        raise ValueError(f"{rule.__name__} reads a base model; give one")
    out_plans = inputs.out_plans(out_dtype)
    named = _takes_name(rule)

    def tensors() -> Iterator[Tensor]:
        for p, out_plan in zip(progress_bytes(inputs.plans, inputs.bytes_read(uses_base), "merge", enabled=progress, leave=False), out_plans):
            if p.action != "merge":
                yield fixed_tensor(p, inputs)
                continue
            work = work_dtype(p.dtype)
            stacked = torch.stack(inputs.tensors_of(p.name)).to(work)
            theta0 = inputs.base[p.name].to(work) if uses_base else None
            _check_finite(p.name, stacked, theta0, inputs)
            merged = rule(theta0, stacked, **options, **({"name": p.name} if named else {}))
            if not all_finite(merged):
                raise ValueError(f"merging tensor {p.name!r} gave non-finite values though every input is finite there; nothing was written")
            yield as_output(p.name, merged, out_plan.dtype)

    metadata = {"merged": ",".join(inputs.names), "rule": rule.__name__, "options": repr(options)}
    return emit(out_plans, tensors(), out, metadata, like=like, base=base, max_shard_bytes=max_shard_bytes)


def as_tensor_merge(rule: TensorRule, uses_base: bool = True) -> Callable[..., Merged]:
    """The registered merge of ``rule``: its signature is the merges' fixed arguments, then the rule's options (the
    parameters after ``base`` and ``tensors``, but the tensor's ``name``), which the registry reads."""

    def merge(base: Weights, tasks: Mapping[str, TaskModel], data: MergeData | None, *, strict: bool, progress: bool, **options: Any) -> Merged:
        weights = {task: model.weights for task, model in tasks.items()}
        return Merged(weights=merge_tensor_wise(base, weights, rule, options, uses_base=uses_base, strict=strict, progress=progress))

    options = [p for p in list(inspect.signature(rule).parameters.values())[2:] if not (p.name == "name" and _takes_name(rule))]
    merge.__signature__ = merge_signature(options)
    merge.__name__, merge.__doc__, merge.rule, merge.uses_base = rule.__name__, rule.__doc__, rule, uses_base
    return merge
