"""Model merging: streaming checkpoint IO, the generalised task-arithmetic merge and its presets, TALL masks,
Fisher merging and RegMean, fine-tuned checkpoints to merge and the merged models that serve every task."""

from workbench.merge.arithmetic import PRESETS, MergeOptions, merge, merge_tensor, model_thresholds, preset, task_vectors, trim_top_k
from workbench.merge.tall import TaskMasks, choose_tall_lambdas, consensus_merge, retrieve, tall_masks
from workbench.merge.sources import Checkpoint, TensorPlan, open_checkpoint, open_checkpoints, plan, write_safetensors

__all__ = [
    "Checkpoint",
    "MergeOptions",
    "PRESETS",
    "TaskMasks",
    "TensorPlan",
    "choose_tall_lambdas",
    "consensus_merge",
    "merge",
    "merge_tensor",
    "model_thresholds",
    "open_checkpoint",
    "open_checkpoints",
    "plan",
    "preset",
    "retrieve",
    "tall_masks",
    "task_vectors",
    "trim_top_k",
    "write_safetensors",
]
