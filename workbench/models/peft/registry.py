"""Every parameter-efficient scheme by name, built on a backbone by one maker.

``make_scheme("lora", tasks, backbone, rank=4)`` builds a :class:`~workbench.tasks.MultiTaskModel`
whose backbone is frozen and whose trainable parameters are the scheme's (and the heads');
:data:`SCHEMES` lists each with its family, options and defaults (read from its builder's signature,
after the tasks and the backbone), and its paper. A scheme builds like an architecture, so that
:meth:`~workbench.studies.Problem.make_model` and the architecture studies take either name.

- **low rank**: ``lora``, one LoRA shared by the tasks; ``task_lora``, one LoRA per task; ``mtl_lora``, a shared
  low-rank space with each task's transform and mixture of up-projections inside; ``multilora``, parallel LoRAs
  with learned output scales;
- **routed low rank** (no task id): ``molora``, a sparse mixture of LoRA experts routed per token; ``smora``, one
  LoRA whose ranks are experts, a few per token, balanced by a bias;
- **bottleneck adapter**: ``adapter``, one residual bottleneck MLP after each output projection, shared;
  ``task_adapter``, one per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.models.backbone import Backbone
from workbench.registry import Entry, Registry
from workbench.tasks import MultiTaskModel, Task

__all__ = ["SCHEMES", "make_scheme", "scheme_table"]

_FIXED = ("tasks", "backbone")

SCHEMES: Registry[Entry] = Registry("parameter-efficient scheme", [
    Entry("lora", "low rank", "one LoRA on the targeted layers, shared by every task", "workbench.models.peft.lora.lora",
          paper="Hu et al. 2021, LoRA: low-rank adaptation of large language models", fixed=_FIXED),
    Entry("task_lora", "low rank", "one LoRA per task on the targeted layers, nothing shared but the frozen model", "workbench.models.peft.lora.lora",
          paper="Hu et al. 2021, LoRA: low-rank adaptation of large language models", fixed=_FIXED, defaults={"per_task": True}),
    Entry("mtl_lora", "low rank", "a shared low-rank space, each task's transform inside it and mixture of shared up-projections",
          "workbench.models.peft.mtl_lora.mtl_lora", paper="Yang et al. 2024, MTL-LoRA: low-rank adaptation for multi-task learning", fixed=_FIXED),
    Entry("multilora", "low rank", "parallel LoRA modules with learned output scales that start at zero, shared",
          "workbench.models.peft.multilora.multilora",
          paper="Wang et al. 2023, MultiLoRA: democratizing LoRA for better multi-task learning", fixed=_FIXED),
    Entry("molora", "routed low rank", "LoRA experts on each targeted layer, a router sending every token to its top k, no task id",
          "workbench.models.peft.routed.molora",
          paper="Liao et al. 2024, MING-MoE: enhancing medical multi-task learning with a sparse mixture of low-rank adapter experts", fixed=_FIXED),
    Entry("smora", "routed low rank", "one LoRA whose every rank is an expert, k ranks per token chosen by a score and a balancing bias",
          "workbench.models.peft.routed.smora",
          paper="Zhao et al. 2025, Each rank could be an expert: single-ranked mixture of experts LoRA for multi-task learning", fixed=_FIXED),
    Entry("adapter", "bottleneck adapter", "a residual bottleneck MLP after each output projection, shared by every task",
          "workbench.models.peft.bottleneck.bottleneck_adapter",
          paper="Houlsby et al. 2019, Parameter-efficient transfer learning for NLP; Pfeiffer et al. 2020, AdapterHub", fixed=_FIXED),
    Entry("task_adapter", "bottleneck adapter", "a residual bottleneck MLP per task after each output projection, nothing shared",
          "workbench.models.peft.bottleneck.bottleneck_adapter",
          paper="Houlsby et al. 2019, Parameter-efficient transfer learning for NLP; Pfeiffer et al. 2020, AdapterHub", fixed=_FIXED,
          defaults={"per_task": True}),
])


def make_scheme(name: str, tasks: Sequence[Task], backbone: Backbone, **options: Any) -> MultiTaskModel:
    """The scheme ``name`` for ``tasks`` on ``backbone``; errors list what exists (see :mod:`workbench.registry`)."""
    entry, resolved = SCHEMES.resolve(name, options)
    return entry.target()(list(tasks), backbone, **resolved)


def scheme_table():
    """A table (pandas DataFrame) of every scheme: family, options with defaults, summary, paper."""
    return SCHEMES.table()
