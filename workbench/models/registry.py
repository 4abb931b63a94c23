"""Every multi-task architecture by name, built from a backbone by one maker.

``make_architecture("mmoe", tasks, backbone, n_experts=8)`` builds a
:class:`~workbench.tasks.MultiTaskModel` for the tasks on the :class:`~workbench.models.Backbone`;
:data:`ARCHITECTURES` lists each with its family, options and defaults (read from its builder's
signature, after the tasks and the backbone), and its paper.

- **hard sharing**: ``hps``, one shared encoder and a linear head per task;
- **mixture of experts**: ``mmoe``, a softmax gate per task over shared experts; ``cgc``, shared experts and
  each task's own; ``dselect_k``, a gate per task that selects k of the shared experts; ``ple``, levels of
  CGC on the backbone's stages; ``task_moe``, top-k routing per task, sparse; ``home``, CGC with HoME's remedies
  for collapse (normalised experts), degradation (a meta level per task category) and underfitting (feature gates);
  ``task_expert``, experts on several stages, each task's gate mixing them with its memory, rewritten stage by stage;
- **task fusion**: ``adatt``, each task's experts fused into every task's output by its gate;
- **task columns**: ``cross_stitch``, a copy of the backbone per task, mixed between stages.
- **task attention**: ``mtan``, a shared trunk whose stages' outputs each task weighs by its own attention masks;
  ``multitab_net``, a transformer over task tokens and the input's features, each head on its task's token.
- **task hierarchy**: ``hmtl``, each task supervising the stage of its level, higher stages reading the input too;
- **task-specific bottom**: ``dtrn``, each task's bottom layer generated from its embedding, then refined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.models.backbone import Backbone
from workbench.registry import Entry, Registry
from workbench.tasks import MultiTaskModel, Task

__all__ = ["ARCHITECTURES", "make_architecture", "architecture_table"]

_FIXED = ("tasks", "backbone")

ARCHITECTURES: Registry[Entry] = Registry("architecture", [
    Entry("hps", "hard sharing", "one shared encoder, a linear head per task", "workbench.models.hps.hard_sharing",
          paper="Caruana 1997, Multitask learning", fixed=_FIXED),
    Entry("mmoe", "mixture of experts", "a softmax gate per task over shared experts", "workbench.models.mmoe.mmoe",
          paper="Ma et al. 2018, Modeling task relationships in multi-task learning with multi-gate mixture-of-experts", fixed=_FIXED),
    Entry("cgc", "mixture of experts", "shared experts and each task's own, a softmax gate per task over both", "workbench.models.cgc.cgc",
          paper="Tang et al. 2020, Progressive layered extraction (PLE): a novel multi-task learning model for personalized recommendations",
          fixed=_FIXED),
    Entry("dselect_k", "mixture of experts", "a gate per task that selects k shared experts through smooth binary codes",
          "workbench.models.dselect_k.dselect_k",
          paper="Hazimeh et al. 2021, DSelect-k: differentiable selection in the mixture of experts with applications to multi-task learning",
          fixed=_FIXED),
    Entry("ple", "mixture of experts", "levels of CGC on the backbone's stages, each task's gated output the next level's input",
          "workbench.models.ple.ple",
          paper="Tang et al. 2020, Progressive layered extraction (PLE): a novel multi-task learning model for personalized recommendations",
          fixed=_FIXED),
    Entry("task_moe", "mixture of experts", "each task's router sends a sample to its top k experts, and only those run on it",
          "workbench.models.task_moe.task_moe",
          paper="Liang et al. 2022, M3ViT: mixture-of-experts vision transformer for efficient multi-task learning; Shazeer et al. 2017 (top-k gating)",
          fixed=_FIXED),
    Entry("adatt", "task fusion", "each task's experts, fused into every task's output by its gate, plus a residual of its own",
          "workbench.models.adatt.adatt",
          paper="Li et al. 2023, AdaTT: adaptive task-to-task fusion network for multitask learning in recommendations", fixed=_FIXED),
    Entry("cross_stitch", "task columns", "a copy of the backbone per task, their stages' outputs mixed by learned weights",
          "workbench.models.cross_stitch.cross_stitch", paper="Misra et al. 2016, Cross-stitch networks for multi-task learning", fixed=_FIXED),
    Entry("mtan", "task attention", "a shared trunk, each task's attention masks on its stages' outputs, fed forward stage by stage",
          "workbench.models.mtan.mtan", paper="Liu et al. 2019, End-to-end multi-task learning with attention", fixed=_FIXED),
    Entry("home", "mixture of experts", "CGC with HoME's remedies: normalised Swish experts, a meta level per task category, feature and self gates",
          "workbench.models.home.home",
          paper="Wang et al. 2024, HoME: hierarchy of multi-gate experts for multi-task learning at Kuaishou", fixed=_FIXED),
    Entry("multitab_net", "task attention", "a transformer over task tokens and one token per input feature, masked between them; head t reads task token t",
          "workbench.models.multitab.multitab_net",
          paper="Sinodinos, Wei & Armanfard 2026 (AAAI), MultiTab: a scalable foundation for multitask learning on tabular data", fixed=_FIXED),
    Entry("hmtl", "task hierarchy", "each task supervises the backbone stage of its level, higher stages reading the input through a shortcut",
          "workbench.models.hmtl.hmtl",
          paper="Sanh, Wolf & Ruder 2019 (AAAI), A hierarchical multi-task approach for learning embeddings from semantic tasks", fixed=_FIXED),
    Entry("dtrn", "task-specific bottom", "a shared trunk, each task's bottom layer generated from its embedding by a hypernetwork, then SE-refined",
          "workbench.models.dtrn.dtrn",
          paper="Liu et al. 2023 (CIKM), Deep task-specific bottom representation network for multi-task recommendation", fixed=_FIXED),
    Entry("task_expert", "mixture of experts", "experts on several backbone stages, each task's gate mixing them and its memory, rewritten stage by stage",
          "workbench.models.task_expert.task_expert",
          paper="Ye & Xu 2023 (ICCV), TaskExpert: dynamically assembling multi-task representations with memorial mixture-of-experts",
          fixed=_FIXED),
])


def make_architecture(name: str, tasks: Sequence[Task], backbone: Backbone, **options: Any) -> MultiTaskModel:
    """The architecture ``name`` for ``tasks`` on ``backbone``; errors list what exists (see :mod:`workbench.registry`)."""
    entry, resolved = ARCHITECTURES.resolve(name, options)
    return entry.target()(list(tasks), backbone, **resolved)


def architecture_table():
    """A table (pandas DataFrame) of every architecture: family, options with defaults, summary, paper."""
    return ARCHITECTURES.table()
