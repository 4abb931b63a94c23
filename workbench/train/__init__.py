"""Multi-task training: the loop, every registered method, single-task baselines and the Δm% comparison."""

from workbench.train.loop import TrainingResult, single_task_baselines, train
from workbench.train.method import Method, StepOutcome
from workbench.train.metrics import delta_m
from workbench.train.registry import METHODS, make_method, method_table

__all__ = ["METHODS", "Method", "StepOutcome", "TrainingResult", "delta_m", "make_method", "method_table", "single_task_baselines", "train"]
