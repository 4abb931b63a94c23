"""The experiments behind the notebooks, one module each, built from the registries.

- :mod:`~workbench.studies.problems`: each dataset by name with its backbone (:func:`load_problem`);
- :mod:`~workbench.studies.methods`: training methods compared over seeds, Δm% (:func:`compare_methods`),
  and :mod:`~workbench.studies.claims`, the published claims about them (:func:`check_claims`);
- :mod:`~workbench.studies.architectures`: every architecture under the same methods, and what their gates do;
- :mod:`~workbench.studies.schemes`: every parameter-efficient scheme against full training, its costs and the conflict inside it;
- :mod:`~workbench.studies.composition`: LoraHub, each task's LoRA composed from the others' on a few examples;
- :mod:`~workbench.studies.transfer`: ground-truth transfer by training every subset (:func:`measure_transfer`);
- :mod:`~workbench.studies.grouping`: every affinity probe against the measured transfer, groupings and their payoff;
- :mod:`~workbench.studies.validity`: every pairwise probe against the truth over random synthetic problems;
- :mod:`~workbench.studies.shapes`: the same study on several shapes of the data (a dataset per task, missing labels), side by side;
- :mod:`~workbench.studies.saliency`: saliency during training, against parameter conflict, attribution validity;
- :mod:`~workbench.studies.fine_tuned` and :mod:`~workbench.studies.merging`: fine-tuned sets and every merge of them.
"""

from workbench.studies.architectures import (
    ARCHITECTURE_CLAIMS, COLLAPSE_MEASURES, architecture_summary, check_architecture_claims, check_remedies, claimed_architectures, compare_architectures,
    expert_summary, expert_usage, gated_architectures, remedy_study,
)
from workbench.studies.claims import check_claims, claimed_methods
from workbench.studies.composition import COMPOSITIONS, LORAHUB_CLAIMS, check_lorahub_claims, lorahub_study
from workbench.studies.fine_tuned import FineTunedSet, Recipe, fine_tuned_checkpoints
from workbench.studies.grouping import GroupingStudy, study_task_grouping
from workbench.studies.merging import (
    MergeSet, compare_merges, density_curves, density_merges, interference_correlations, lambda_curves, load_merge_set, pairwise_interference,
    published_data_free_ordering, published_ordering, swept_merges, swept_scores,
)
from workbench.studies.methods import compare_methods, method_summary
from workbench.studies.problems import DATA_SHAPES, DATASETS, Problem, load_problem
from workbench.studies.schemes import (
    SCHEME_CLAIMS, adapter_conflict, check_scheme_claims, claimed_schemes, compare_schemes, composed_comparison, first_stage, peak_memory_mib,
    sharing_schemes, step_memory,
)
from workbench.studies.shapes import claims_across_shapes, methods_across_shapes, probes_across_shapes
from workbench.studies.saliency import attribution_validity_study, representation_vs_parameter, saliency_during_training
from workbench.studies.transfer import grouping_loss, measure_transfer, pairwise_gain
from workbench.studies.validity import probe_readings, validity_study

__all__ = [
    "SCHEME_CLAIMS",
    "adapter_conflict",
    "check_scheme_claims",
    "claimed_schemes",
    "compare_schemes",
    "composed_comparison",
    "first_stage",
    "peak_memory_mib",
    "sharing_schemes",
    "step_memory",
    "COMPOSITIONS",
    "LORAHUB_CLAIMS",
    "check_lorahub_claims",
    "lorahub_study",
    "ARCHITECTURE_CLAIMS",
    "COLLAPSE_MEASURES",
    "DATA_SHAPES",
    "DATASETS",
    "FineTunedSet",
    "GroupingStudy",
    "MergeSet",
    "Problem",
    "Recipe",
    "architecture_summary",
    "attribution_validity_study",
    "check_architecture_claims",
    "check_remedies",
    "check_claims",
    "claimed_architectures",
    "claimed_methods",
    "claims_across_shapes",
    "compare_architectures",
    "compare_merges",
    "compare_methods",
    "expert_summary",
    "expert_usage",
    "fine_tuned_checkpoints",
    "gated_architectures",
    "remedy_study",
    "grouping_loss",
    "interference_correlations",
    "lambda_curves",
    "density_curves",
    "density_merges",
    "load_merge_set",
    "load_problem",
    "measure_transfer",
    "method_summary",
    "methods_across_shapes",
    "pairwise_gain",
    "pairwise_interference",
    "probe_readings",
    "probes_across_shapes",
    "published_ordering",
    "representation_vs_parameter",
    "saliency_during_training",
    "study_task_grouping",
    "published_data_free_ordering",
    "swept_merges",
    "swept_scores",
    "validity_study",
]
