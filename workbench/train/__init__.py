"""Multi-task training: the loop, every registered method, single-task baselines and Δm%."""

from workbench.train.loop import TrainingResult, single_task_baselines, train
from workbench.train.method import Method, StepOutcome
from workbench.train.metrics import delta_m
from workbench.train.registry import COSTS, METHODS, comparable_methods, make_method, method_table

__all__ = [
    "COSTS", "METHODS", "Method", "StepOutcome", "TrainingResult", "comparable_methods", "delta_m", "make_method", "method_table",
    "single_task_baselines", "train",
]
