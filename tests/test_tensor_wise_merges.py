"""Breadcrumbs, SLERP, NuSLERP, Model Stock and the Karcher mean against mergekit's merge of the same tensors, and their definitions' edge cases."""

import pytest
import torch

from tests.test_merge import assert_close, random_models, registered
from workbench.merge.slerp import spherical_interpolation

# case: (registered merge and its options, mergekit's method and parameters (per-model ones keyed by task), task models, with a base)
CASES = {
    "slerp_0.3": (("slerp", {"t": 0.3}), ("slerp", {"t": 0.3}), 1, True),
    "slerp_0.8": (("slerp", {"t": 0.8}), ("slerp", {"t": 0.8}), 1, True),
    "nuslerp_flat": (("nuslerp", {"weights": [1.0, 3.0]}), ("nuslerp", {"weight": [1.0, 3.0]}), 2, True),
    "nuslerp_rows": (("nuslerp", {"weights": [2.0, 1.0], "flatten": False}), ("nuslerp", {"weight": [2.0, 1.0], "nuslerp_flatten": False}), 2, True),
    "nuslerp_row_wise": (("nuslerp", {"weights": [1.0, 1.0], "flatten": False, "row_wise": True}),
                         ("nuslerp", {"weight": [1.0, 1.0], "nuslerp_flatten": False, "nuslerp_row_wise": True}), 2, True),
    "model_stock": (("model_stock", {}), ("model_stock", {}), 3, True),
    "model_stock_filter_wise": (("model_stock", {"filter_wise": True}), ("model_stock", {"filter_wise": True}), 3, True),
    "karcher": (("karcher", {}), ("karcher", {}), 3, False),
    "breadcrumbs": (("breadcrumbs", {"density": 0.5, "gamma": 0.1, "lam": 0.8, "weights": [0.5, 1.0, 2.0]}),
                    ("breadcrumbs", {"density": 0.5, "gamma": 0.1, "lambda": 0.8, "weight": [0.5, 1.0, 2.0]}), 3, True),
    "breadcrumbs_no_outliers": (("breadcrumbs", {"density": 0.3, "gamma": 0.0}), ("breadcrumbs", {"density": 0.3, "gamma": 0.0, "weight": [1.0, 1.0, 1.0]}), 3, True),
    "breadcrumbs_ties": (("breadcrumbs_ties", {"density": 0.6, "gamma": 0.05, "weights": [1.0, 0.5, 1.5]}),
                         ("breadcrumbs_ties", {"density": 0.6, "gamma": 0.05, "weight": [1.0, 0.5, 1.5]}), 3, True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_tensor_wise_merges_equal_mergekit(case, seed):
    from mergekit.merge_methods.api import merge_state_dicts

    (name, options), (method, parameters), n_tasks, with_base = CASES[case]
    base, tasks = random_models(n_tasks=n_tasks, seed=seed, scale=0.5)
    per_model = {key: dict(zip(tasks, value)) for key, value in parameters.items() if key == "weight"}
    if with_base:
        theirs = merge_state_dicts({"base": base, **tasks}, method, base="base", parameters={**parameters, **per_model})
    else:
        theirs = merge_state_dicts(list(tasks.values()), method, parameters=parameters)
    ours = registered(name, base, tasks, **options)
    assert_close(ours, {key: theirs[key] for key in ours}, atol=1e-5)


def test_slerp_interpolates_linearly_between_parallel_tensors_and_keeps_the_norm_between_orthogonal_unit_ones():
    v0 = torch.tensor([3.0, 0.0])
    torch.testing.assert_close(spherical_interpolation(v0, 2 * v0, 0.25), 1.25 * v0)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    halfway = spherical_interpolation(e0, e1, 0.5)
    torch.testing.assert_close(halfway, torch.tensor([1.0, 1.0]) / 2**0.5)
    assert torch.linalg.vector_norm(spherical_interpolation(e0, e1, 0.3)) == pytest.approx(1.0)


def test_slerp_refuses_a_t_that_is_not_a_number():
    base, tasks = random_models(n_tasks=1)
    with pytest.raises(ValueError, match="t must be a finite number"):
        registered("slerp", base, tasks, t=float("nan"))
