"""Plotly figure builders that take xarray objects."""

from workbench.viz.conflict import agreement_over_training, cosine_matrix_slider, layer_conflict_heatmap, pair_cosine_over_time, reference_vs_measured
from workbench.viz.offline import use_offline_plotly

__all__ = ["agreement_over_training", "cosine_matrix_slider", "layer_conflict_heatmap", "pair_cosine_over_time", "reference_vs_measured", "use_offline_plotly"]
