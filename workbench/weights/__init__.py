"""Weights: state dicts read tensor by tensor from files, shards or modules and written as they are made; task
vectors streamed in chunks, trimmed and masked; training-run snapshots as safetensors trees."""

from workbench.weights.state_dicts import (
    MemoryWeights, SafetensorsWeights, Selection, Source, TensorPlan, Weights, equal_buffer, open_task_weights, open_weights, plan,
    write_safetensors, write_state_dict,
)
from workbench.weights.task_vectors import TaskMasks, magnitude_thresholds, task_vector_chunks, trim, work_dtype
from workbench.weights.trees import load_tree, save_tree

__all__ = [
    "MemoryWeights",
    "SafetensorsWeights",
    "Selection",
    "Source",
    "TaskMasks",
    "TensorPlan",
    "Weights",
    "equal_buffer",
    "load_tree",
    "magnitude_thresholds",
    "open_task_weights",
    "open_weights",
    "plan",
    "save_tree",
    "task_vector_chunks",
    "trim",
    "work_dtype",
    "write_safetensors",
    "write_state_dict",
]
