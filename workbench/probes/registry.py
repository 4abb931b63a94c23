"""Every probe by name, each one call: ``probe(model, batch, ...) -> xarray.Dataset``.

``make_probe("gradient_conflict", by="module")`` builds a :class:`Probe`; :data:`PROBES` lists each
with its family, options and defaults (read from its function's signature: every parameter after the
model and the batch except what the training loop hands in, the ``optimizer`` and the step's
``jacobian``), its paper and these traits:

- ``pairwise``: the variable that holds its task × task reading (``None`` for a probe without one),
  which :func:`task_matrix` turns into a ``(source, target)`` matrix, the shape report cards, groupings
  and validity studies take;
- ``layered``: the variable of the same reading per layer, if it has one;
- ``directed``: whether ``source → target`` differs from ``target → source``;
- ``batch``: the batch a study records it on: ``"training"`` (TAG's lookahead is a training step;
  the gradient-cosine affinity is its cheap twin) or a fixed ``"held_out"`` one;
- ``needs``: what the model must have for the probe to apply (``"gates"``: a gated architecture;
  ``"shared"``: a shared trainable parameter, which a scheme of one adapter per task lacks), if
  anything (:meth:`Probe.applies_to`).

Families: **conflict** (the per-task gradients against each other), **affinity** (predictors of
transfer between tasks), **saliency** (the tasks in the shared representation and in the inputs),
**experts** (which experts of a gated architecture serve which task).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import xarray as xr
from torch import Tensor

from workbench.registry import Entry, Registry
from workbench.tasks import Inputs

__all__ = ["PROBES", "Probe", "applies_to", "make_probe", "pairwise_probes", "probe_table", "task_matrix"]

_P = "workbench.probes"
_FIXED = ("model", "batch", "optimizer", "jacobian")


def _entry(name: str, family: str, summary: str, build: str, paper: str, pairwise: str | None, batch: str = "held_out", **traits: Any) -> Entry:
    return Entry(name, family, summary, f"{_P}.{build}", paper=paper, fixed=_FIXED, traits={"pairwise": pairwise, "batch": batch, "directed": False, **traits})


PROBES: Registry[Entry] = Registry("probe", [
    _entry("gradient_conflict", "conflict", "cosine, magnitude similarity and conflict of the per-task gradients, whole and per layer",
           "conflict.gradient_conflict", "Yu et al. 2020, Gradient surgery for multi-task learning; Guangyuan et al. 2023, Recon",
           pairwise="cosine", layered="layer_cosine", needs="shared"),
    _entry("tag_affinity", "affinity", "TAG's lookahead: how one step on a task changes every task's loss", "affinity.tag_affinity",
           "Fifty et al. 2021, Efficiently identifying task groupings for multi-task learning", pairwise="affinity", batch="training", directed=True,
           needs="shared"),
    _entry("cosine_affinity", "affinity", "the cosine of the per-task gradients on the training batch, as an affinity", "affinity.cosine_affinity",
           "Fifty et al. 2021 (the gradient-cosine baseline of TAG)", pairwise="affinity", batch="training", needs="shared"),
    _entry("saliency_conflict", "saliency", "how the tasks' saliencies in the shared representation agree, per sample", "saliency.saliency_conflict",
           "Wang et al. 2025, Rep-MTL: unleashing the power of representation-level task saliency", pairwise="cosine"),
    _entry("task_saliency", "saliency", "∂L_t/∂Z per sample: where in the shared representation each task pulls", "saliency.task_saliency",
           "Wang et al. 2025, Rep-MTL", pairwise=None),
    _entry("input_attribution", "saliency", "gradient × input of each task's loss: pixels, or word pieces", "saliency.input_attribution",
           "Simonyan et al. 2014; Shrikumar et al. 2016 (gradient × input)", pairwise=None),
    _entry("expert_gates", "experts", "gate mass per task on each expert, gate entropy, shared experts owned by one task, dead and collapsed experts",
           "experts.expert_gates", "Ma et al. 2018 (MMoE's gates); Wang et al. 2024, HoME (expert collapse and degradation)",
           pairwise="gate_overlap", needs="gates"),
])


class Probe:
    """A registered probe with its options: ``probe(model, batch, **handed_in)``, ``handed_in`` being the training
    loop's ``optimizer`` or ``jacobian`` where the probe takes them."""

    def __init__(self, entry: Entry, options: Mapping[str, Any]) -> None:
        self.entry, self.options = entry, dict(options)

    @property
    def name(self) -> str:
        return self.entry.name

    def applies_to(self, model) -> bool:
        """Whether the probe can read ``model`` (a probe that ``needs`` gates reads a gated architecture only)."""
        return applies_to(self.name, model)

    def takes(self, parameter: str) -> bool:
        """Whether the probe's function has the parameter ``parameter`` (``"optimizer"``, ``"jacobian"``)."""
        return parameter in inspect.signature(self.entry.target()).parameters

    def __call__(self, model, batch: tuple[Inputs, Mapping[str, Tensor]], **handed_in: Any) -> xr.Dataset:
        if self.entry.traits.get("needs") == "shared" and not model.shared_parameters():
            raise ValueError(f"{self.name} compares the tasks' gradients on the shared parameters; this model shares none "
                             "(each of its trainable parameters serves one task)")
        return self.entry.target()(model, batch, **self.options, **handed_in)

    def __repr__(self) -> str:
        return f"Probe({self.name!r}, {self.options})"


def applies_to(name: str, model) -> bool:
    """Whether the registered probe ``name`` can read ``model``: what its entry ``needs``, the model has."""
    needs = PROBES.entry(name).traits.get("needs")
    if needs is None:
        return True
    from workbench.probes.experts import has_gates

    return {"gates": has_gates, "shared": lambda m: bool(m.shared_parameters())}[needs](model)


def pairwise_probes(model=None) -> list[str]:
    """Every registered probe with a task × task reading, in registration order; given ``model``, those that apply to it."""
    return [name for name, entry in PROBES.items() if entry.traits["pairwise"] and (model is None or applies_to(name, model))]


def make_probe(name: str, **options: Any) -> Probe:
    """The probe ``name`` with ``options``; errors list what exists (see :mod:`workbench.registry`)."""
    entry, resolved = PROBES.resolve(name, options)
    return Probe(entry, resolved)


def probe_table():
    """A table (pandas DataFrame) of every probe: family, options with defaults, its pairwise reading, summary, paper."""
    return PROBES.table(pairwise=lambda e: e.traits["pairwise"] or "", directed=lambda e: e.traits["directed"], batch=lambda e: e.traits["batch"])


def task_matrix(result: xr.Dataset, start: int | None = None, stop: int | None = None, layer: str | None = None) -> xr.DataArray:
    """A probe's task × task reading as a ``(source, target)`` DataArray (rows: the source task).

    ``result`` is one probe result or a recorded history (with a ``step`` dim, averaged over the
    steps in ``[start, stop)``, NaN skipped); the probe is named by its ``attrs["probe"]``. With
    ``layer``, the reading of that layer (a probe with a ``layered`` reading). A probe's
    ``(task, other_task)`` matrix becomes ``(source, target)``.
    """
    name = result.attrs.get("probe")
    entry = PROBES.entry(name)
    variable = entry.traits.get("layered") if layer is not None else entry.traits["pairwise"]
    if variable is None:
        kind = "per-layer" if layer is not None else "task × task"
        raise ValueError(f"probe {name!r} has no {kind} reading")
    matrix = result[variable].sel(layer=layer, drop=True) if layer is not None else result[variable]
    matrix = matrix.rename({"task": "source", "other_task": "target"}) if "task" in matrix.dims else matrix
    if "step" in matrix.dims:
        chosen = matrix.sel(step=slice(start, None if stop is None else stop - 1))
        if chosen.sizes["step"] == 0:
            raise ValueError(f"no recorded step in [{start}, {stop}); recorded: {matrix.step.values.tolist()}")
        matrix = chosen.mean("step")
    return matrix.transpose("source", "target").rename(name)
