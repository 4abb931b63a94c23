"""Multi-task training: the loop, single-task baselines and the standard Δm% comparison."""

from workbench.train.loop import TrainingResult, single_task_baselines, train
from workbench.train.metrics import delta_m

__all__ = ["TrainingResult", "delta_m", "single_task_baselines", "train"]
