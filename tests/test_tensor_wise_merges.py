"""Breadcrumbs, DELLA, SCE, passthrough, SLERP, NuSLERP, Model Stock and the Karcher mean against mergekit's merge of the
same tensors, and their definitions' edge cases."""

import pytest
import torch

from tests.test_merge import assert_close, random_models, registered
from workbench.merge.della import della_uniforms, keep_probabilities
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
    "sce": (("sce", {}), ("sce", {}), 3, True),
    "sce_top": (("sce", {"select_topk": 0.4}), ("sce", {"select_topk": 0.4}), 3, True),
    "passthrough": (("passthrough", {}), ("passthrough", {}), 1, False),
    "passthrough_scaled": (("passthrough", {"scale": 0.5}), ("passthrough", {"scale": [0.5]}), 1, False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_tensor_wise_merges_equal_mergekit(case, seed):
    from mergekit.merge_methods.api import merge_state_dicts

    (name, options), (method, parameters), n_tasks, with_base = CASES[case]
    base, tasks = random_models(n_tasks=n_tasks, seed=seed, scale=0.5)
    per_model = {key: dict(zip(tasks, value)) for key, value in parameters.items() if key in ("weight", "scale")}
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


DELLA_CASES = {
    "della": (("della", {"density": 0.5, "epsilon": 0.2, "weights": [1.0, 0.5, 2.0]}), {"density": 0.5, "epsilon": 0.2, "weight": [1.0, 0.5, 2.0]}),
    "della_unnormalised": (("della", {"density": 0.6, "epsilon": 0.1, "lam": 0.7, "normalize": False, "rescale": False}),
                           {"density": 0.6, "epsilon": 0.1, "lambda": 0.7, "normalize": False, "rescale": False, "weight": [1.0, 1.0, 1.0]}),
    "della_linear": (("della_linear", {"density": 0.4, "epsilon": 0.15, "weights": [0.5, 1.0, 1.5]}), {"density": 0.4, "weight": [0.5, 1.0, 1.5]}),
    "della_linear_normalised": (("della_linear", {"density": 0.7, "epsilon": 0.1, "normalize": True}),
                                {"density": 0.7, "epsilon": 0.1, "normalize": True, "weight": [1.0, 1.0, 1.0]}),
}


@pytest.mark.parametrize("case", DELLA_CASES)
def test_della_equals_mergekit_given_the_same_draws(case, monkeypatch):
    """mergekit draws DELLA's masks from torch's global generator: here its ``torch.bernoulli`` reads the workbench's
    uniforms of the same tensor and task, so both keep the same entries, tensor by tensor."""
    import mergekit.sparsify
    from mergekit.merge_methods.api import merge_state_dicts

    (name, options), parameters = DELLA_CASES[case]
    method = name
    base, tasks = random_models(n_tasks=3, seed=0, scale=0.5)
    ours = registered(name, base, tasks, **options)
    per_model = {key: dict(zip(tasks, value)) for key, value in parameters.items() if key == "weight"}
    for key in [k for k in base if base[k].is_floating_point()]:
        calls = []

        def bernoulli(probabilities, key=key, calls=calls):
            uniforms = della_uniforms(options.get("seed", 0), key, len(calls), probabilities.numel()).reshape(probabilities.shape)
            calls.append(key)
            return (uniforms < probabilities).to(probabilities.dtype)

        monkeypatch.setattr(mergekit.sparsify.torch, "bernoulli", bernoulli)
        theirs = merge_state_dicts({"base": {key: base[key]}, **{t: {key: sd[key]} for t, sd in tasks.items()}}, method, base="base",
                                   parameters={**parameters, **per_model})
        assert calls == [key] * 3
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=0, msg=key)


def test_della_keeps_the_density_on_average_and_larger_entries_more_often():
    tau = torch.randn(40, 500, generator=torch.Generator().manual_seed(0))
    probabilities = keep_probabilities(tau, 0.3, 0.2)
    assert probabilities.shape == tau.shape
    torch.testing.assert_close(probabilities.mean(1), torch.full((40,), 0.3), atol=1e-6, rtol=0)
    order = tau.abs().argsort(dim=1)
    ranked = probabilities.gather(1, order)
    assert bool((ranked.diff(dim=1) > 0).all()) and ranked[:, 0].allclose(torch.tensor(0.1)) and ranked[:, -1].allclose(torch.tensor(0.5))
    base, tasks = {"w": torch.zeros(40, 500)}, {"a": {"w": tau}}
    kept = registered("della_linear", base, tasks, density=0.3, epsilon=0.2, rescale=False)["w"] != 0
    assert abs(float(kept.float().mean()) - 0.3) < 0.01
    large = tau.abs() > tau.abs().median(dim=1, keepdim=True).values
    assert float(kept[large].float().mean()) > float(kept[~large].float().mean()) + 0.05


def test_della_rescaling_keeps_each_task_vectors_l1_norm_and_the_seed_decides_the_draws():
    g = torch.Generator().manual_seed(1)
    base, tasks = {"w": torch.zeros(8, 50)}, {"a": {"w": torch.randn(8, 50, generator=g)}}
    merged = registered("della_linear", base, tasks, density=0.5, epsilon=0.1)["w"]
    torch.testing.assert_close(merged.abs().sum(), tasks["a"]["w"].abs().sum(), rtol=1e-5, atol=0)
    again = registered("della_linear", base, tasks, density=0.5, epsilon=0.1)["w"]
    other = registered("della_linear", base, tasks, density=0.5, epsilon=0.1, seed=1)["w"]
    assert torch.equal(merged, again) and not torch.equal(merged != 0, other != 0)


def test_della_refuses_probabilities_outside_the_unit_interval():
    base, tasks = random_models(n_tasks=2)
    with pytest.raises(ValueError, match="density ± epsilon"):
        registered("della", base, tasks, density=0.9, epsilon=0.15)


def test_sce_selects_the_entries_that_vary_most_and_weights_tasks_by_their_energy():
    base = {"w": torch.zeros(4)}
    tasks = {"a": {"w": torch.tensor([1.0, 1.0, 3.0, 0.0])}, "b": {"w": torch.tensor([1.0, -1.0, -1.0, 0.0])}}
    # variance over the tasks: 0, 1, 4, 0 (two non-zero); select_topk 0.5 keeps the one of largest variance
    merged = registered("sce", base, tasks, select_topk=0.5)["w"]
    torch.testing.assert_close(merged, torch.tensor([0.0, 0.0, 3.0, 0.0]))
    # all kept: energies 11/4 and 3/4 give c = 11/14, 3/14; the elected signs +, +, +, + erase b's negative entries
    merged = registered("sce", base, tasks)["w"]
    torch.testing.assert_close(merged, torch.tensor([1.0, 1.0, 3.0, 0.0]))
