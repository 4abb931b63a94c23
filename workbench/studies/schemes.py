"""Parameter-efficient schemes compared on one problem: every registered scheme against training the backbone's
trainable blocks in full (hard sharing), by Δm%, trainable parameters, time and memory per step, and how the
tasks' gradients conflict inside the adapter over training."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import xarray as xr

from workbench.models import SCHEMES
from workbench.probes.recorder import ProbeRecorder
from workbench.probes.registry import applies_to
from workbench.studies.architectures import check_architecture_claims, compare_architectures
from workbench.studies.methods import compare_methods
from workbench.train.loop import summed_step, train

__all__ = ["SCHEME_CLAIMS", "compare_schemes", "composed_comparison", "first_stage", "claimed_schemes", "check_scheme_claims", "peak_memory_mib", "step_memory", "sharing_schemes", "adapter_conflict"]

SCHEME_CLAIMS = [
    ("mtl_lora", "task_lora", "Yang et al. 2024: MTL-LoRA above one LoRA per task"),
    ("mtl_lora", "lora", "Yang et al. 2024: MTL-LoRA above one shared LoRA"),
    ("lora", "task_lora", "Liu et al. 2025 (Align-LoRA): one shared LoRA at least as good as one per task (here without its alignment loss; "
                          "'at least as good' holds unless the verdict is reversed)"),
    ("align_lora", "task_lora", "Liu et al. 2025: Align-LoRA (one shared LoRA and its alignment loss) at least as good as one LoRA per task "
                                "('at least as good' holds unless the verdict is reversed)"),
    ("align_lora", "lora", "Liu et al. 2025: Align-LoRA above the shared LoRA without its alignment loss (a zero loss where every task "
                           "is labelled on every sample: there the two train alike)"),
    ("scalearn", "adapter_fusion", "Frohmann et al. 2024: ScaLearn close to AdapterFusion with far fewer parameters ('close' holds unless "
                                   "the verdict is reversed; the parameters are in the comparison)"),
]
"""The published orderings of schemes tested: ``(better, worse, source)``."""


def compare_schemes(
    problem, methods: Sequence[str], seeds: Sequence[int] = (0,), steps: int = 300, *, schemes: Sequence[str] | None = None, **options: Any,
) -> xr.Dataset:
    """:func:`~workbench.studies.compare_architectures` of hard sharing (the backbone's trainable blocks trained in full,
    whose single-task runs are every Δm%'s baselines) and ``schemes`` (every registered one by default), along the
    ``architecture`` dim; ``parameters`` are the trainable ones. ``options`` go to it (``conflict_every`` records
    the conflict inside the adapter; NaN for a scheme that shares nothing).

    A scheme that composes trained adapters (trait ``composes``: AdapterFusion, ScaLearn) runs its two stages
    under each seed (:func:`first_stage`, once for all the compositions of one scheme, then
    :func:`composed_comparison`): its ``steps`` and ``seconds_per_step`` are the second stage's, and
    ``attrs["source_steps"]`` says what the first stage trained before."""
    names = list(SCHEMES) if schemes is None else list(schemes)
    unknown = [name for name in names if name not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown parameter-efficient schemes {unknown}; available: {sorted(SCHEMES)}")
    composing = [name for name in names if SCHEMES[name].traits.get("composes")]
    done = {}
    if composing:
        done["hps"] = compare_methods(problem, methods, seeds, steps, architecture="hps", **options)
        stages = {source: first_stage(problem, source, seeds, steps, **options) for source in dict.fromkeys(SCHEMES[n].traits["composes"] for n in composing)}
        done |= {name: composed_comparison(problem, name, methods, seeds, steps, single_task=done["hps"].single_task,
                                           sources=stages[SCHEMES[name].traits["composes"]], **options) for name in composing}
    result = compare_architectures(problem, methods, seeds, steps, architectures=["hps", *names], done=done, **options)
    return result.assign_attrs(source_steps={name: steps for name in composing})


def first_stage(problem, scheme: str, seeds: Sequence[int], steps: int, **options: Any) -> dict[int, Any]:
    """``{seed: model}``: ``scheme`` (the adapters a composition reads, ``task_adapter``) trained ``steps`` steps under each
    seed by summing the tasks' losses (nothing is shared, so each adapter trains on its task alone, as a single-task
    run), evaluated on the validation split at the start and the end only. ``options``: ``compare_methods``'s; the
    batch size, optimizer and device are used."""
    training = {key: options[key] for key in ("batch_size", "optimizer", "device") if key in options}
    splits, trained = problem.splits, {}
    for seed in seeds:
        torch.manual_seed(seed)
        model = problem.make_model(splits.tasks, architecture=scheme)
        train(model, splits.train, steps, method="sum", eval_data=splits.validation, eval_every=steps, seed=seed, progress=False,
              **training).complete(f"the {scheme} of seed {seed}")
        trained[seed] = model
    return trained


def composed_comparison(problem, scheme: str, methods: Sequence[str], seeds: Sequence[int], steps: int, *, single_task: xr.DataArray,
                        sources: Mapping[int, Any] | None = None, **options: Any) -> xr.Dataset:
    """:func:`~workbench.studies.compare_methods` of a scheme that composes trained adapters, in its two stages under each
    seed: ``sources[seed]``, the scheme it composes (its ``composes`` trait) trained by :func:`first_stage` (trained
    here when not given), then the composition built on those adapters and trained by each method for ``steps``
    steps, scored against the baselines ``single_task``. ``options`` go to ``compare_methods``."""
    source_scheme = SCHEMES[scheme].traits["composes"]
    if sources is None:
        sources = first_stage(problem, source_scheme, seeds, steps, **options)
    missing = [seed for seed in seeds if seed not in sources]
    if missing:
        raise ValueError(f"{scheme}: no trained {source_scheme} for the seeds {missing}")
    per_seed = []
    for seed in seeds:
        composing = dataclasses.replace(problem, architecture_options={
            **problem.architecture_options, scheme: {**problem.architecture_options.get(scheme, {}), "sources": sources[seed]}})
        per_seed.append(compare_methods(composing, methods, [seed], steps, architecture=scheme, single_task=single_task, **options))
    return xr.concat(per_seed, dim="seed", data_vars="minimal", join="exact", combine_attrs="override").assign_attrs(sources=source_scheme)


def claimed_schemes(per_family: int | None = None) -> list[str]:
    """The schemes :data:`SCHEME_CLAIMS` name, and with ``per_family`` the first that many of every family too, in
    registration order (every registered scheme when ``per_family`` is ``None``): a quick run's sample."""
    if per_family is None:
        return list(SCHEMES)
    named = {name for better, worse, _ in SCHEME_CLAIMS for name in (better, worse)}
    firsts = {name for family in dict.fromkeys(e.family for e in SCHEMES.values()) for name in SCHEMES.names(family)[:per_family]}
    return [name for name in SCHEMES if name in named | firsts]


def check_scheme_claims(settings: Mapping[str, xr.Dataset], split: str = "test", method: str = "ew"):
    """:data:`SCHEME_CLAIMS` in every setting (``{label: compare_schemes result}``), paired by seed, as
    :func:`~workbench.studies.check_architecture_claims` reads them."""
    return check_architecture_claims(settings, split, method, claims=SCHEME_CLAIMS)


def peak_memory_mib(fn: Callable[..., object], *args: Any) -> float:
    """Peak MiB held by tensors allocated during ``fn(*args)``: allocations minus frees in order (torch's profiler,
    counted between operators)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    held = peak = 0
    for event in events:
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak / 2**20


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Send what native code writes to the process's stdout and stderr to nowhere within the block (the profiler's
    start and stop lines would otherwise end up in a notebook's output); Python's own streams are flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def step_memory(problem, architectures: Sequence[str], batch_size: int = 64, seed: int = 0) -> xr.DataArray:
    """``(architecture,)`` peak MiB of one training step (:func:`~workbench.train.loop.summed_step` with Adam) of each
    architecture or scheme on the first ``batch_size`` training samples of ``problem``."""
    x, targets = problem.splits.train.batch(0, batch_size)
    peaks = []
    for name in architectures:
        torch.manual_seed(seed)
        model = problem.make_model(problem.splits.tasks, architecture=name)
        step = functools.partial(summed_step, model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad]), x, targets)
        step()  # Adam's state is allocated at the first step: the peak counted is a step's in training
        peaks.append(peak_memory_mib(step))
    return xr.DataArray(peaks, dims="architecture", coords={"architecture": list(architectures)}, name="peak_mib",
                        attrs={"batch_size": batch_size})


def sharing_schemes(problem) -> list[str]:
    """The registered schemes whose models on ``problem`` share a trainable parameter (the conflict probe applies)."""
    return [name for name in SCHEMES if applies_to("gradient_conflict", problem.make_model(problem.splits.tasks, architecture=name))]


def adapter_conflict(problem, schemes: Sequence[str], steps: int, every: int = 5, *, method: str = "ew", seed: int = 0, held_out: int = 256,
                     **options: Any) -> dict[str, xr.Dataset]:
    """``{scheme: gradient_conflict history}``: one run per scheme trained by ``method``, the tasks' gradients on its shared
    parameters (inside the adapter) compared every ``every`` steps on a fixed batch of ``held_out`` validation samples;
    ``options`` go to :func:`~workbench.train.train`."""
    splits = problem.splits
    histories = {}
    for name in schemes:
        torch.manual_seed(seed)
        model = problem.make_model(splits.tasks, architecture=name)
        recorder = ProbeRecorder("gradient_conflict", every=every, batch=splits.validation.probe_batch(held_out))
        run = train(model, splits.train, steps, method=method, seed=seed, recorders=[recorder], progress=False, **options)
        histories[name] = run.complete(f"{name}'s conflict").probes["gradient_conflict"].assign_attrs(scheme=name)
    return histories
