"""Probes of task interaction: each is ``probe(model, batch, ...) -> xarray.Dataset``, registered in :data:`PROBES`.

Gradient conflict, TAG's lookahead and gradient-cosine affinity, task saliency and input
attribution (the registry), the recorder that samples any of them during training, the task × task
reading of every probe (:func:`task_matrix`), groupings and report cards built on it, and the
task-vector probes of fine-tuned checkpoints (which read weights, not batches).
"""

from workbench.probes.affinity import cosine_affinity, tag_affinity, tag_affinity_loop
from workbench.probes.conflict import conflict_frequency, gradient_conflict, gramian_statistics, mean_cosine, s_conflict_score, upper_pairs
from workbench.probes.experts import expert_gates
from workbench.probes.grouping import affinity_scores, grouping_table, measured_scores, select_groups
from workbench.probes.recorder import ProbeRecorder, recorders_for
from workbench.probes.registry import PROBES, Probe, applies_to, make_probe, pairwise_probes, probe_table, task_matrix
from workbench.probes.saliency import input_attribution, saliency_conflict, saliency_measures, task_saliency
from workbench.probes.task_vectors import mask_overlap, task_vector_similarity
from workbench.probes.isolation import untouched
from workbench.probes.validation import attribution_recovery, pairwise_rank_correlation, rank_correlation, rank_correlation_over_training, report_card

__all__ = [
    "PROBES",
    "Probe",
    "ProbeRecorder",
    "affinity_scores",
    "applies_to",
    "attribution_recovery",
    "conflict_frequency",
    "cosine_affinity",
    "expert_gates",
    "gradient_conflict",
    "gramian_statistics",
    "grouping_table",
    "input_attribution",
    "make_probe",
    "mask_overlap",
    "mean_cosine",
    "measured_scores",
    "pairwise_probes",
    "pairwise_rank_correlation",
    "probe_table",
    "rank_correlation",
    "rank_correlation_over_training",
    "recorders_for",
    "report_card",
    "s_conflict_score",
    "saliency_conflict",
    "saliency_measures",
    "select_groups",
    "tag_affinity",
    "tag_affinity_loop",
    "task_matrix",
    "task_saliency",
    "task_vector_similarity",
    "untouched",
    "upper_pairs",
]
