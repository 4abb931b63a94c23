"""Plotly figure builders that take xarray objects."""

from workbench.viz.affinity import affinity_dendrogram, affinity_graph, affinity_slider, payoff_figure, predicted_vs_measured, validity_figure
from workbench.viz.affinity_explorer import affinity_explorer
from workbench.viz.architectures import architecture_bars, architecture_costs
from workbench.viz.composition import lorahub_figure
from workbench.viz.conflict import agreement_over_training, cosine_matrix_slider, layer_conflict_heatmap, pair_cosine_over_time, reference_vs_measured
from workbench.viz.experts import expert_utilisation
from workbench.viz.explorers import Figures, conflict_explorer, conflict_views, methods_explorer
from workbench.viz.merging import (
    MergeScorer,
    interference_figure,
    mean_curve_figure,
    mask_overlap_figure,
    merge_comparison_figure,
    merge_explorer,
    per_task_curves_figure,
    task_vector_heatmap,
)
from workbench.viz.methods import conflict_bars, cost_bars, delta_m_bars, learning_curves, tradeoff
from workbench.viz.offline import use_offline_plotly
from workbench.viz.saliency import (
    attribution_grid,
    attribution_validity_figure,
    representation_vs_parameter_figure,
    saliency_over_training,
    share_maps,
    token_attribution,
)
from workbench.viz.saliency_explorer import saliency_explorer

__all__ = [
    "architecture_bars",
    "architecture_costs",
    "lorahub_figure",
    "expert_utilisation",
    "affinity_dendrogram",
    "affinity_graph",
    "affinity_slider",
    "payoff_figure",
    "predicted_vs_measured",
    "validity_figure",
    "conflict_bars",
    "cost_bars",
    "delta_m_bars",
    "learning_curves",
    "tradeoff",
    "Figures",
    "conflict_explorer",
    "conflict_views",
    "methods_explorer",
    "interference_figure",
    "mean_curve_figure",
    "mask_overlap_figure",
    "merge_comparison_figure",
    "merge_explorer",
    "per_task_curves_figure",
    "task_vector_heatmap",
    "attribution_grid",
    "attribution_validity_figure",
    "representation_vs_parameter_figure",
    "saliency_over_training",
    "share_maps",
    "token_attribution",
    "agreement_over_training", "cosine_matrix_slider", "layer_conflict_heatmap", "pair_cosine_over_time", "reference_vs_measured", "use_offline_plotly",
    "affinity_explorer", "saliency_explorer", "MergeScorer"]
