"""Model merging: the generalised task-arithmetic merge and its presets, TALL masks, Fisher merging, RegMean and
AdaMerging, fine-tuned checkpoints to merge and the merged models that serve every task.

Checkpoint IO lives in :mod:`workbench.state_dicts` and task-vector streaming and trimming in
:mod:`workbench.task_vectors` (shared with the task-vector probes); the names users need are
re-exported here.
"""

from workbench.merge.arithmetic import PRESETS, MergeOptions, merge, merge_tensor, preset
from workbench.merge.tall import choose_tall_lambdas, consensus_merge, retrieve, tall_masks
from workbench.state_dicts import Checkpoint, TensorPlan, open_checkpoint, open_checkpoints, plan, write_safetensors
from workbench.task_vectors import TaskMasks, magnitude_thresholds, task_vectors, trim

__all__ = [
    "Checkpoint",
    "MergeOptions",
    "PRESETS",
    "TaskMasks",
    "TensorPlan",
    "choose_tall_lambdas",
    "consensus_merge",
    "magnitude_thresholds",
    "merge",
    "merge_tensor",
    "open_checkpoint",
    "open_checkpoints",
    "plan",
    "preset",
    "retrieve",
    "tall_masks",
    "task_vectors",
    "trim",
    "write_safetensors",
]
