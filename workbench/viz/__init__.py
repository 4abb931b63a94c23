"""Plotly figure builders that take xarray objects."""

from workbench.viz.conflict import cosine_matrix_slider, layer_conflict_heatmap, pair_cosine_over_time, planted_vs_measured
from workbench.viz.offline import use_offline_plotly

__all__ = ["cosine_matrix_slider", "layer_conflict_heatmap", "pair_cosine_over_time", "planted_vs_measured", "use_offline_plotly"]
