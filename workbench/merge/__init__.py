"""Model merging: one call for every merge, ``merge(base, models, data=None) -> Merged``, from the registry.

``make_merge(name, **options)`` builds any of :data:`MERGES` (weight averaging, task arithmetic, TIES,
DARE, DARE-TIES, TALL, Consensus, Fisher, RegMean, AdaMerging); each declares the data it reads.
The generalised task-arithmetic core, :func:`merge_task_vectors`, streams checkpoint files tensor by
tensor and can write its result as it goes. Weights IO and task vectors live in
:mod:`workbench.weights`.
"""

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors, merge_tensor
from workbench.merge.method import DATA_NEEDS, Merge, MergeData, Merged
from workbench.merge.presets import preset_options
from workbench.merge.registry import MERGES, applies_to, make_merge, merge, merge_table
from workbench.merge.tall import choose_tall_lambdas, consensus_merge, retrieve, tall_masks

__all__ = [
    "DATA_NEEDS",
    "MERGES",
    "Merge",
    "MergeData",
    "MergeOptions",
    "Merged",
    "applies_to",
    "choose_tall_lambdas",
    "consensus_merge",
    "make_merge",
    "merge",
    "merge_table",
    "merge_task_vectors",
    "merge_tensor",
    "preset_options",
    "retrieve",
    "tall_masks",
]
