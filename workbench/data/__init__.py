"""Dataset builders that return ready data plus their ground truth where one exists."""

from workbench.data.synthetic import SyntheticTasks, block_similarity, make_synthetic

__all__ = ["SyntheticTasks", "block_similarity", "make_synthetic"]
