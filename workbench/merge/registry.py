"""Every merge by name, each one call: ``make_merge("ties", density=0.1)(base, models, data)``.

:data:`MERGES` lists each with its family, options and defaults (read from its function's signature,
after the base, the task models and the data), its paper, and these traits:

- ``data``: what it reads beyond the weights (see :mod:`workbench.merge.method`): ``"none"``,
  ``"unlabelled"``, ``"labelled"`` or ``"gradients"`` (or a function of the options giving one);
- ``test_time``: it adapts to the inputs it will serve, so a study gives it the test inputs;
- ``kinds``: the task kinds it can merge (AdaMerging's entropy needs classification), all by default;
- ``order_free``: whether the order of the task models leaves the result unchanged (``True`` by
  default; DARE seeds each task's mask by its position, AdaMerging draws each task's batches in turn);
- ``models``: ``(fewest, most)`` task models it merges (``most`` ``None``: any number; by default ``(1, None)``):
  SLERP one beside the base, NuSLERP two.

Families: **data-free** (weight averaging, task arithmetic, TIES, DARE, DARE-TIES; Breadcrumbs (and its TIES form), DELLA (and
DELLA-linear), SCE, passthrough, MagMax, TSV-M, Iso-C and Iso-CTS, PCB, MetaGPT, SLERP, NuSLERP, Model Stock and the Karcher mean, tensor-wise rules of :mod:`workbench.merge.tensor_wise`), **localised**
(TALL masks: per-task retrieval and Consensus; EMR's elect, mask and rescale) and **data-dependent** (Fisher, RegMean, AdaMerging).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workbench.merge.method import Merge, MergeData, Merged
from workbench.registry import Entry, Registry
from workbench.tasks import Task
from workbench.weights.state_dicts import Source

__all__ = ["MERGES", "make_merge", "merge", "merge_table", "applies_to"]

_FIXED = ("base", "tasks", "data", "strict", "progress")
_M = "workbench.merge"


def _localised_need(options: Mapping[str, Any]) -> str:
    """TALL's masks read labelled data to choose λ_t, none once λ_t are given."""
    return "none" if options.get("lambdas") is not None else "labelled"


def _entry(name: str, family: str, summary: str, build: str, paper: str, **traits: Any) -> Entry:
    return Entry(name, family, summary, f"{_M}.{build}", paper=paper, fixed=_FIXED, traits={"data": "none", **traits})


MERGES: Registry[Entry] = Registry("merge", [
    _entry("average", "data-free", "the mean of the task models", "presets.average", "Wortsman et al. 2022, Model soups"),
    _entry("task_arithmetic", "data-free", "θ_0 + λ Σ_t τ_t", "presets.task_arithmetic", "Ilharco et al. 2023, Editing models with task arithmetic"),
    _entry("ties", "data-free", "trim, elect sign, disjoint mean", "presets.ties", "Yadav et al. 2023, TIES-Merging: resolving interference when merging models"),
    _entry("dare", "data-free", "drop and rescale, then task arithmetic", "presets.dare",
           "Yu et al. 2024, Language models are super Mario: absorbing abilities from homologous models as a free lunch", order_free=False),
    _entry("dare_ties", "data-free", "drop and rescale, then sign election and the disjoint sum", "presets.dare_ties",
           "Yu et al. 2024 (DARE) with Yadav et al. 2023 (TIES), as FusionBench runs them", order_free=False),
    _entry("breadcrumbs", "data-free", "each task vector without its largest and smallest entries, then summed", "breadcrumbs.breadcrumbs_merge",
           "Davari & Belilovsky 2024, Model breadcrumbs: scaling multi-task model merging with sparse masks"),
    _entry("breadcrumbs_ties", "data-free", "breadcrumbs' masks, then TIES' sign election", "breadcrumbs.breadcrumbs_ties_merge",
           "Davari & Belilovsky 2024 (Breadcrumbs) with Yadav et al. 2023 (TIES), as mergekit merges them"),
    _entry("della", "data-free", "each task vector dropped at random, less often where it is larger, rescaled, then TIES' sign election",
           "della.della_merge", "Deep, Bhatt & Bhardwaj 2024, DELLA-Merging: reducing interference in model merging through magnitude-based sampling",
           order_free=False),
    _entry("della_linear", "data-free", "DELLA's drops and rescaling, then the weighted sum", "della.della_linear_merge",
           "Deep, Bhatt & Bhardwaj 2024, DELLA-Merging (as mergekit's della_linear)", order_free=False),
    _entry("sce", "data-free", "the entries of highest variance across tasks, each task weighted by its energy, minority signs erased",
           "sce.sce_merge", "Wan et al. 2024, FuseChat: knowledge fusion of chat models (SCE, as mergekit merges it)"),
    _entry("passthrough", "data-free", "the one model's tensors, optionally scaled", "passthrough.passthrough_merge",
           "mergekit's passthrough (Goddard et al. 2024, Arcee's MergeKit)", models=(1, 1)),
    _entry("magmax", "data-free", "every entry from the task vector of largest magnitude there", "magmax.magmax_merge",
           "Marczak et al. 2024, MagMax: leveraging model merging for seamless continual learning", order_free=False),
    _entry("tsv_merge", "data-free", "each task's top singular vectors, decorrelated across tasks (TSV-M)", "task_singular_vectors.task_singular_vectors_merge",
           "Gargiulo et al. 2025, Task singular vectors: reducing task interference in model merging"),
    _entry("iso_c", "data-free", "the summed task matrix with its spectrum flattened to its mean", "isotropic.iso_c_merge",
           "Marczak et al. 2025, No task left behind: isotropic model merging with common and task-specific subspaces"),
    _entry("iso_cts", "data-free", "a common subspace and each task's own directions, with a flat spectrum", "isotropic.iso_cts_merge",
           "Marczak et al. 2025, No task left behind: isotropic model merging with common and task-specific subspaces"),
    _entry("pcb", "data-free", "each entry weighted by its size within its task and its agreement across tasks; the top fraction kept",
           "pcb.pcb", "Du et al. 2024, Parameter competition balancing for model merging"),
    _entry("metagpt", "data-free", "task arithmetic with each task weighted by its task vector's squared norm", "metagpt.metagpt",
           "Zhou et al. 2024, MetaGPT: merging large language models using model exclusive task arithmetic"),
    _entry("slerp", "data-free", "the base and one model interpolated along the great circle", "slerp.slerp_merge",
           "Shoemake 1985, Animating rotation with quaternion curves (as mergekit merges two models)", models=(1, 1)),
    _entry("nuslerp", "data-free", "two models' task vectors interpolated along the great circle, by their weights", "nuslerp.nuslerp_merge",
           "mergekit's NuSLERP (Goddard et al. 2024, Arcee's MergeKit)", models=(2, 2)),
    _entry("model_stock", "data-free", "the models' mean pulled towards the base by the angle of their offsets", "model_stock.model_stock_merge",
           "Jang et al. 2024, Model Stock: all we need is just a few fine-tuned models", models=(2, None)),
    _entry("karcher", "data-free", "the models' spherical (Karcher) mean, scaled to their mean norm", "karcher.karcher_merge",
           "Karcher 1977, Riemannian center of mass and mollifier smoothing (as mergekit merges models)"),
    _entry("tall", "localised", "each task served by its TALL mask of the task-arithmetic model", "tall.tall",
           "Wang et al. 2024, Localizing task information for improved model merging and compression", data=_localised_need),
    _entry("consensus", "localised", "the coordinates at least k TALL masks keep", "tall.consensus",
           "Wang et al. 2024, Localizing task information for improved model merging and compression", data=_localised_need),
    _entry("emr", "localised", "one elected task vector, each task served through its sign mask and its rescaler", "emr.emr",
           "Huang et al. 2024, EMR-Merging: tuning-free high-performance model merging"),
    _entry("fisher", "data-dependent", "each entry weighted by the task models' diagonal Fisher", "fisher.fisher",
           "Matena & Raffel 2022, Merging models with Fisher-weighted averaging", data="gradients"),
    _entry("regmean", "data-dependent", "each linear map fitted to every task's inputs in closed form", "regmean.regmean",
           "Jin et al. 2023, Dataless knowledge fusion by merging weights of language models", data="unlabelled"),
    _entry("task_wise_adamerging", "data-dependent", "one coefficient per task, learned by entropy minimisation", "adamerging.task_wise_adamerging",
           "Yang et al. 2024, AdaMerging: adaptive model merging for multi-task learning", data="unlabelled", test_time=True,
           kinds=("classification",), order_free=False),
    _entry("layer_wise_adamerging", "data-dependent", "one coefficient per task and tensor, learned by entropy minimisation", "adamerging.layer_wise_adamerging",
           "Yang et al. 2024, AdaMerging: adaptive model merging for multi-task learning", data="unlabelled", test_time=True,
           kinds=("classification",), order_free=False),
])


def make_merge(name: str, **options: Any) -> Merge:
    """The merge ``name`` with ``options``, to call as ``merge(base, models, data=None)``; errors list what exists."""
    entry, resolved = MERGES.resolve(name, options)
    return Merge(entry, resolved)


def merge(base: Source, models: Mapping[str, Source], method: str = "task_arithmetic", data: MergeData | None = None, **options: Any) -> Merged:
    """``make_merge(method, **options)(base, models, data)`` in one call."""
    return make_merge(method, **options)(base, models, data)


def applies_to(name: str, tasks: Sequence[Task]) -> bool:
    """Whether the merge ``name`` can merge one model of each of these tasks: its ``kinds`` and ``models`` traits."""
    entry = MERGES.entry(name)
    kinds = entry.traits.get("kinds")
    fewest, most = entry.traits.get("models", (1, None))
    return (kinds is None or all(task.kind in kinds for task in tasks)) and fewest <= len(tasks) and (most is None or len(tasks) <= most)


def merge_table():
    """A table (pandas DataFrame) of every merge: family, options with defaults, the data it reads, summary, paper."""
    return MERGES.table(data=lambda entry: Merge(entry, MERGES.resolve(entry.name, {})[1]).data_need)
