"""Merge configurations in mergekit's YAML format, planned and run on model folders as they sit on disk.

A configuration names ``merge_method``, ``base_model``, ``models`` (each ``model`` with its own ``parameters``),
global ``parameters``, ``dtype`` and ``tokenizer_source``, as mergekit reads them::

    merge_method: ties
    base_model: models/base
    models:
      - model: models/sst2
        parameters: {weight: 1.0, density: 0.5}
      - model: models/qnli
        parameters: {weight: 0.5, density: 0.5}
    parameters: {normalize: true, lambda: 1.0}
    dtype: float16

mergekit's methods that the workbench's generalised merge expresses are read with mergekit's parameters and
defaults (:data:`MERGEKIT_METHODS`), and so are Breadcrumbs (and its TIES form), SLERP, NuSLERP, Model Stock and the Karcher mean, tensor-wise rules here
(:data:`TENSOR_WISE_METHODS`; a base listed among their models too, as mergekit has it, is the base); a parameter given per model or globally means the same (a per-model value
wins). ``weight`` may differ between models; ``density`` must be the same for all (the core trims every task to
one density). ``int8_mask`` (a memory setting of mergekit's) is accepted and changes nothing. ``linear`` takes no ``base_model``
(mergekit would add it to the average with parameters of its own): list it among the models. DARE's masks are
the workbench's seeded ones (``seed`` in the parameters), not mergekit's unseeded draws. Every other registered
preset of the generalised merge (:func:`~workbench.merge.presets.preset_options`) is read by its own name with the
workbench's option names in ``parameters``. Paths are relative to the configuration's folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.merge.presets import preset_options
from workbench.merge.registry import MERGES, make_merge
from workbench.merge.streaming import as_output, emit, open_inputs
from workbench.merge.tensor_wise import merge_tensor_wise

__all__ = ["MERGEKIT_METHODS", "TENSOR_WISE_METHODS", "MergePlan", "workbench_methods", "read_merge_config", "dry_run", "run_merge_config", "parse_size", "describe_dry_run"]

_TOP_LEVEL = {"merge_method", "base_model", "models", "parameters", "dtype", "tokenizer_source"}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
_GENERAL = {"weight", "density", "normalize", "lambda", "int8_mask", "seed"}
MERGEKIT_METHODS = {
    # method: (its parameters, mergekit's defaults of normalize and of density)
    "linear": ({"weight", "normalize", "int8_mask"}, True),
    "task_arithmetic": (_GENERAL - {"density", "seed"}, False),
    "ties": (_GENERAL - {"seed"}, True),
    "dare_linear": (_GENERAL, False),
    "dare_ties": (_GENERAL, False),
}
"""mergekit's methods of the generalised merge, read with mergekit's parameters: ``{method: (parameters, normalize by default)}``."""
_SPARSE = {"weight": "weights", "density": "density", "lambda": "lam"}
_DELLA = _SPARSE | {"epsilon": "epsilon", "normalize": "normalize", "rescale": "rescale", "seed": "seed"}
TENSOR_WISE_METHODS = {
    # method: (mergekit's parameters -> the rule's options, whether it reads the base, mergekit's defaults where the rule's differ)
    "slerp": ({"t": "t"}, True, {}),
    "nuslerp": ({"weight": "weights", "nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"}, None, {}),
    "model_stock": ({"filter_wise": "filter_wise"}, True, {}),
    "karcher": ({"max_iter": "max_iter", "tol": "tol"}, False, {}),
    "breadcrumbs": (_SPARSE | {"gamma": "gamma"}, True, {"density": 1.0}),
    "breadcrumbs_ties": (_SPARSE | {"gamma": "gamma"}, True, {"density": 1.0}),
    "della": (_DELLA, True, {"density": 1.0}),
    "della_linear": (_DELLA, True, {"density": 1.0}),
    "sce": ({"select_topk": "select_topk", "int8_mask": None}, True, {}),
    "passthrough": ({"scale": "scale"}, False, {}),
}
"""mergekit's methods that are tensor-wise rules here: ``{method: ({mergekit parameter: rule option (None: accepted, no
effect)}, base read: True, False, or None for optional, {rule option: mergekit's default})}``. ``weight`` is per model
(NuSLERP's two weights); the others are global (or per model for a method of one model). mergekit's defaults are
applied where they differ from the rule's (its ``density`` is 1, keeping every entry, where the rules keep 0.9 or 0.5),
so that a configuration without them merges as mergekit would."""


@dataclass(frozen=True)
class MergePlan:
    """A configuration read and checked: what :func:`run_merge_config` will do."""

    method: str
    base: Path | None
    models: dict[str, Path]
    options: MergeOptions | dict[str, Any]
    dtype: torch.dtype | None
    like: Path
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """How it runs (:func:`workbench_methods`); mergekit's methods of the generalised merge are ``"core"``."""
        return "core" if isinstance(self.options, MergeOptions) else workbench_methods()[self.method]


def workbench_methods() -> dict[str, str]:
    """The registered merges ``workbench merge`` runs, by how: ``"core"`` (a preset of the generalised merge, streamed),
    ``"tensor_wise"`` (a rule, :mod:`workbench.merge.tensor_wise`, streamed tensor by tensor), ``"streamed"`` (a whole-model
    merge's own streamed form, its entry's ``streamed`` attribute: MetaGPT) or ``"whole_model"`` (a data-free merge that
    holds every task vector at once, as PCB's and EMR's statistics are over the whole model: run through the shared merge
    call, then written). Merges that read data are not among them."""
    kinds = {}
    for name, entry in MERGES.items():
        target = entry.target()
        if hasattr(target, "options_of"):
            kinds[name] = "core"
        elif hasattr(target, "streamed"):
            kinds[name] = "streamed"
        elif hasattr(target, "rule"):
            kinds[name] = "tensor_wise"
        elif entry.traits["data"] == "none":
            kinds[name] = "whole_model"
    return kinds


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def read_merge_config(path: str | os.PathLike) -> MergePlan:
    """Read and check the configuration at ``path`` (see the module docstring); every error names the file and what is wrong."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise _fail(path, f"not YAML: {error}") from error
    if not isinstance(config, Mapping):
        raise _fail(path, "a merge configuration is a mapping with merge_method, models and base_model")
    if "slices" in config:
        raise _fail(path, "slices (mergekit's layer stacking, which makes a new architecture) are not read; list whole models under models")
    unknown = sorted(set(config) - _TOP_LEVEL)
    if unknown:
        raise _fail(path, f"unknown keys {unknown}; a configuration has {sorted(_TOP_LEVEL)}")
    method = config.get("merge_method")
    own = workbench_methods()
    presets = [name for name, kind in own.items() if kind == "core"]
    rules = [name for name, kind in own.items() if kind != "core" and name not in TENSOR_WISE_METHODS]  # read by their option names
    if method not in MERGEKIT_METHODS and method not in TENSOR_WISE_METHODS and method not in presets + rules:
        raise _fail(path, f"unknown merge_method {method!r}; mergekit's methods read here: {sorted(MERGEKIT_METHODS | TENSOR_WISE_METHODS)}; "
                          f"the workbench's: {presets + rules} (the others read data, or choose each task's λ_t on it, and run from Python: "
                          f"{[n for n in MERGES if n not in own]})")
    entries = config.get("models")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) and "model" in e for e in entries):
        raise _fail(path, "models must be a list of {model: PATH, parameters: {...}}")
    folder = path.parent
    if (method in TENSOR_WISE_METHODS or method in rules) and config.get("base_model") is not None:  # mergekit lists the base among the models too
        entries = [e for e in entries if str(e["model"]) != str(config["base_model"])]
    models = {}
    for entry in entries:
        model = folder / str(entry["model"])
        label = Path(str(entry["model"])).name
        if label in models:
            raise _fail(path, f"two models are named {label!r}")
        models[label] = model
    base = folder / str(config["base_model"]) if config.get("base_model") is not None else None
    if method in TENSOR_WISE_METHODS:
        reads_base = TENSOR_WISE_METHODS[method][1]
    else:
        reads_base = getattr(MERGES[method].target(), "uses_base", True) if method in rules else method not in ("linear", "average")
    if base is None and reads_base:
        raise _fail(path, f"{method} reads a base_model; give one")
    if base is not None and reads_base is False:
        raise _fail(path, f"{method} merges the listed models and reads no base_model (mergekit would add it to them); list it among the models instead")
    missing = [str(p) for p in [*([base] if base else []), *models.values()] if not p.exists()]
    if missing:
        raise _fail(path, f"no model at {missing}")
    dtype = config.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise _fail(path, f"unknown dtype {dtype!r}; one of {sorted(_DTYPES)}")
    if config.get("tokenizer_source", "base") != "base":
        raise _fail(path, f"tokenizer_source {config['tokenizer_source']!r} is not supported; the merge keeps the base's tokenizer (tokenizer_source: base)")
    per_model = [dict(entry.get("parameters") or {}) for entry in entries]
    general = dict(config.get("parameters") or {})
    if method in MERGEKIT_METHODS:
        options = _mergekit_options(path, method, general, per_model)
    elif method in TENSOR_WISE_METHODS:
        options = _tensor_wise_options(path, method, general, per_model, *TENSOR_WISE_METHODS[method][::2])
    elif method in rules:
        own = list(MERGES[method].options())
        names = {name: name for name in own if name != "weights"} | ({"weight": "weights"} if "weights" in own else {})
        options = _tensor_wise_options(path, method, general, per_model, names, {})
    else:
        options = _workbench_options(path, method, general, per_model)
    like = base if base is not None else next(iter(models.values()))
    return MergePlan(method, base, models, options, _DTYPES.get(dtype), like, dict(config))


def _mergekit_options(path: Path, method: str, general: dict, per_model: list[dict]) -> MergeOptions:
    known, normalize_default = MERGEKIT_METHODS[method]
    for where, given in [("parameters", general), *((f"models[{k}].parameters", p) for k, p in enumerate(per_model))]:
        unknown = sorted(set(given) - known)
        if unknown:
            raise _fail(path, f"{where}: unknown parameters {unknown} for {method}; it reads {sorted(known)}")

    def value(name: str, k: int, default):
        return per_model[k].get(name, general.get(name, default))

    weights = [float(value("weight", k, 1.0)) for k in range(len(per_model))]
    densities = {float(value("density", k, 1.0)) for k in range(len(per_model))}
    if len(densities) > 1:
        raise _fail(path, f"the models' densities differ ({sorted(densities)}); the merge trims every model to one density")
    density = densities.pop()
    normalize = bool(general.get("normalize", normalize_default))
    combine = "mean" if normalize else "sum"
    lam, seed = float(general.get("lambda", 1.0)), int(general.get("seed", 0))
    try:
        if method == "linear":
            return MergeOptions(weights=weights, combine=combine)
        if method == "task_arithmetic":
            return MergeOptions(lam=lam, weights=weights, combine=combine)
        if method == "ties":
            return MergeOptions(lam=lam, weights=weights, density=density, trim="tensor", elect_sign=True, combine=combine)
        return MergeOptions(lam=lam, weights=weights, drop=1.0 - density, rescale="l1", elect_sign=method == "dare_ties", combine=combine, seed=seed)
    except ValueError as error:
        raise _fail(path, str(error)) from error


def _tensor_wise_options(path: Path, method: str, general: dict, per_model: list[dict], names: Mapping[str, str | None],
                         defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The rule's options from the configuration's parameters (``names``: parameter -> option, ``None`` for one that
    changes nothing), over ``defaults``, checked as the registry checks them."""
    single = MERGES[method].traits.get("models") == (1, 1)
    for where, given in [("parameters", general), *((f"models[{k}].parameters", p) for k, p in enumerate(per_model))]:
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise _fail(path, f"{where}: unknown parameters {unknown} for {method}; it reads {sorted(names)}")
        if where != "parameters" and not single and set(given) - {"weight"}:
            raise _fail(path, f"{where}: {sorted(set(given) - {'weight'})} are one value for every model here; give them in the global parameters")
        listed = sorted(name for name, value in given.items() if isinstance(value, (list, dict)))
        if listed:
            raise _fail(path, f"{where}: {listed} vary by layer in mergekit (lists or filters); give one number each")
    given = general | (per_model[0] if single else {})
    options = dict(defaults) | {names[name]: value for name, value in given.items() if name != "weight" and names[name] is not None}
    if "weight" in names:
        options["weights"] = [float(p.get("weight", general.get("weight", 1.0))) for p in per_model]
    try:
        MERGES.resolve(method, options)
    except (ValueError, TypeError) as error:
        raise _fail(path, str(error)) from error
    return options


def _workbench_options(path: Path, method: str, general: dict, per_model: list[dict]) -> MergeOptions:
    given = [p for p in per_model if p]
    if any(set(p) - {"weight"} for p in given):
        raise _fail(path, f"{method}: the workbench's methods take per-model weight only; other options go in the global parameters")
    options = dict(general)
    if given:
        options["weights"] = [float(p.get("weight", 1.0)) for p in per_model]
    try:
        return preset_options(method, **options)
    except (ValueError, TypeError) as error:
        raise _fail(path, str(error)) from error


def dry_run(plan: MergePlan) -> dict[str, Any]:
    """What the merge will read, write and hold, from the files' headers only (no weight is read).

    ``peak_bytes`` is an estimate from the merge's buffers, not a measurement (``benchmarks/bench_merge.py`` sets the
    two side by side): the largest merged tensor in the output dtype twice (the one being made and the one the writer's
    thread writes, :func:`~workbench.files.write_behind`); for the generalised core, besides, two blocks of
    :data:`~workbench.weights.task_vectors.READ_CHUNKS` chunks per input read ahead and two chunk buffers per model (τ and
    its scratch), and so for a streamed whole-model merge (MetaGPT), whose merged tensors are read once per pass (its
    entry's ``passes``); for a tensor-wise rule, that tensor of every input as read and once more stacked, and two more
    for the rule's work (2.95 GB for the large set's Breadcrumbs, whose extra resident memory measured 3.5 GB); for a
    merge that holds the whole model (PCB, EMR), six times every task vector in the work dtype, and its output (EMR's,
    one model per task)."""
    from workbench.weights.task_vectors import CHUNK, READ_CHUNKS, work_dtype

    inputs = open_inputs(str(plan.base) if plan.base is not None else None, {label: str(p) for label, p in plan.models.items()})
    target = MERGES[plan.method].target() if plan.kind != "core" else None
    reads_base = getattr(target, "uses_base", True)
    passes = getattr(target, "passes", 1)
    merged = [p for p in inputs.plans if p.action == "merge"]
    out_plans = inputs.out_plans(plan.dtype)
    served = len(inputs.names) if plan.kind != "core" and MERGES[plan.method].family == "localised" else 1  # a model per task
    largest = max(merged, key=lambda p: p.nbytes, default=None)
    peak = 0
    if largest is not None:
        entries, work = int(torch.Size(largest.shape).numel()), work_dtype(largest.dtype).itemsize
        output = 2 * entries * (plan.dtype or largest.dtype).itemsize
        count = len(inputs.checkpoints) + (reads_base and inputs.base is not None)
        if plan.kind == "whole_model":  # every task vector in the work dtype and about five times as much of the method's work
            whole = sum(int(torch.Size(p.shape).numel()) for p in merged)
            peak = 6 * len(inputs.checkpoints) * whole * work + served * sum(p.nbytes for p in out_plans)
        elif plan.kind == "tensor_wise":  # every input's tensor as read and stacked in the work dtype, and the rule's work
            peak = (2 * count + 2) * entries * work + output
        else:
            chunk = min(CHUNK, entries)
            read_ahead = 2 * count * min(entries, chunk * READ_CHUNKS) * largest.dtype.itemsize
            peak = output + read_ahead + 2 * len(inputs.checkpoints) * chunk * work
    return {"method": plan.method, "options": plan.options, "base": str(plan.base) if plan.base else None,
            "models": {label: str(p) for label, p in plan.models.items()}, "tensors": len(inputs.plans), "merged_tensors": len(merged),
            "bytes_read": sum(n * (passes if p.action == "merge" else 1) for p, n in zip(inputs.plans, inputs.bytes_read(reads_base))), "bytes_written": served * sum(p.nbytes for p in out_plans), "peak_bytes": peak}


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size written as ``transformers`` writes shard sizes: ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a number of bytes."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(text).upper())
    if not match or (match.group(2) or "B") not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"a size is a positive number with a unit among {sorted(_UNITS)} (as 5GB or 500MB), got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2) or "B"])


def describe_dry_run(summary: Mapping[str, Any]) -> str:
    """:func:`dry_run`'s summary as lines for a person."""
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    lines = [f"method: {summary['method']} ({summary['options']})", f"base: {summary['base']}"]
    lines += [f"model {label}: {path}" for label, path in summary["models"].items()]
    lines += [f"tensors: {summary['tensors']} ({summary['merged_tensors']} merged, the others copied)",
              f"reads {mib(summary['bytes_read'])}, writes {mib(summary['bytes_written'])}, "
              f"holds about {mib(summary['peak_bytes'])} at most (an estimate from its buffers)"]
    return "\n".join(lines)


def run_merge_config(plan: MergePlan, out: str | os.PathLike, max_shard_bytes: int | None = None, progress: bool = True) -> Path:
    """Run ``plan`` into the new model folder ``out`` (shards of at most ``max_shard_bytes``, the core's default when ``None``)."""
    if Path(out).exists():
        raise FileExistsError(f"{out} exists; a merge writes a new folder (remove it, or choose another)")
    shared = {"out": out, "out_dtype": plan.dtype, "like": plan.like, "progress": progress} | ({} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes})
    base = str(plan.base) if plan.base is not None else None
    models = {label: str(p) for label, p in plan.models.items()}
    if plan.kind == "core":
        return merge_task_vectors(base, models, plan.options, **shared)
    target = MERGES[plan.method].target()
    if plan.kind == "tensor_wise":
        return merge_tensor_wise(base, models, target.rule, plan.options, uses_base=target.uses_base and base is not None, **shared)
    if plan.kind == "streamed":
        return target.streamed(base, models, **plan.options, **shared)
    return _run_whole_model(plan, base, models, Path(out), max_shard_bytes, progress)


def _run_whole_model(plan: MergePlan, base: str, models: dict[str, str], out: Path, max_shard_bytes: int | None, progress: bool) -> Path:
    """A merge that holds the whole model (:func:`workbench_methods`), run through the shared merge call and written as a
    model folder, or a folder per task under ``out`` for a merge that serves each task its own weights (written in a
    staging folder first, so that ``out`` appears only complete)."""
    merged = make_merge(plan.method, **plan.options)(base, models, progress=progress)
    inputs = open_inputs(base, models)
    out_plans = inputs.out_plans(plan.dtype)
    shard = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}

    def write(weights: dict, target: Path) -> Path:
        tensors = (as_output(o.name, weights[o.name], o.dtype) for o in out_plans)
        return emit(out_plans, tensors, target, {"merged": ",".join(inputs.names), "method": plan.method, "options": repr(plan.options)},
                    like=plan.like, **shard)

    if merged.task_weights is None:
        return write(merged.weights, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        for task, weights in merged.task_weights.items():
            write(weights, staging / task)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
