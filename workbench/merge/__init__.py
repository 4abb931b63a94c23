"""Model merging: streaming checkpoint IO, the generalised task-arithmetic merge and its presets, TALL masks."""

from workbench.merge.arithmetic import PRESETS, MergeOptions, merge, merge_tensor, model_thresholds, preset, task_vectors
from workbench.merge.sources import Checkpoint, TensorPlan, open_checkpoint, open_checkpoints, plan, write_safetensors

__all__ = [
    "Checkpoint",
    "MergeOptions",
    "PRESETS",
    "TensorPlan",
    "merge",
    "merge_tensor",
    "model_thresholds",
    "open_checkpoint",
    "open_checkpoints",
    "plan",
    "preset",
    "task_vectors",
    "write_safetensors",
]
