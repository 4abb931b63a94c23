"""The laws every registered merge obeys, run over the whole registry: a merge is tested the moment it is registered.

Task models are tiny classifiers that share an encoder architecture and keep heads of their own (of different
shapes: the heads are never merged); each merge gets the data its entry declares. (test_merge.py checks the presets
against mergekit and the core against its definition; test_data_dependent_merge.py Fisher, RegMean and AdaMerging
against theirs.)"""

import copy

import pytest
import torch
from torch import nn

from workbench.merge import MERGES, MergeData, make_merge
from workbench.studies.merged_models import encoder_part
from workbench.tasks import MultiTaskModel, classification_task

CLASSES = {"a": 3, "b": 2, "c": 4}
# Per merge: how many identical task models, with which options, give that model back. TALL and Consensus serve
# θ_0 + m ⊙ Σ_t τ_t, which is the model itself for one task model only. Every registered merge must be listed.
IDENTITY = {
    "average": (3, {}),
    "task_arithmetic": (3, {"lam": 1 / 3}),
    "ties": (3, {"density": 1.0}),
    "dare": (3, {"drop": 0.0, "lam": 1 / 3}),
    "dare_ties": (3, {"drop": 0.0, "combine": "mean", "lam": 1.0}),
    "breadcrumbs": (3, {"density": 1.0, "lam": 1 / 3}),
    "breadcrumbs_ties": (3, {"density": 1.0, "lam": 1 / 3}),
    "della": (3, {"density": 1.0}),
    "della_linear": (3, {"density": 1.0, "lam": 1 / 3}),
    "sce": (3, {}),
    "passthrough": (1, {}),
    "magmax": (3, {"lam": 1.0}),
    "metagpt": (3, {}),
    "pcb": (3, {"ratio": 0.5}),  # of KEEPS_PART: the model's task vector kept on its top half, see below
    "tsv_merge": (1, {}),
    "iso_c": (1, {}),  # of FLATTENED: the model's spectrum flattened, see below
    "iso_cts": (1, {}),
    "slerp": (1, {"t": 1.0}),
    "nuslerp": (2, {}),
    "model_stock": (3, {}),
    "karcher": (3, {}),
    "tall": (1, {"lambdas": 0.3}),
    "consensus": (1, {"k": 1, "lambdas": 0.3}),
    "emr": (3, {}),
    "fisher": (3, {}),
    "regmean": (3, {}),
    "task_wise_adamerging": (3, {"steps": 0, "init": 1 / 3}),
    "layer_wise_adamerging": (3, {"steps": 0, "init": 1 / 3}),
}
# Merges that flatten each task matrix's spectrum by design: one model comes back with its matrices' singular vectors
# and every singular value their mean (its vectors unchanged).
FLATTENED = {"iso_c", "iso_cts"}
# Merges that keep only part of each task vector by design (PCB its top ``ratio``): identical models come back on the
# entries kept (PCB's clipping at 0.01% changes the extremes only) and as the base elsewhere.
KEEPS_PART = {"pcb"}
SMALL = {"n_examples": 16, "steps": 3}  # fewer examples and learning steps where a merge has such options


def task_models(tasks=("a", "b", "c"), seed: int = 0, scale: float = 0.3, dtype=torch.float32):
    """The base encoder's tensors and, per task, a single-task model whose encoder is the base's plus ``scale`` noise."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh()).to(dtype)
    models = {}
    for task in tasks:
        model = MultiTaskModel(copy.deepcopy(encoder), [classification_task(task, CLASSES[task])], representation_dim=6).to(dtype)
        with torch.no_grad():
            for parameter in model.encoder.parameters():
                parameter.add_(scale * torch.randn_like(parameter))
        models[task] = model.eval()
    return encoder_part(MultiTaskModel(encoder, [classification_task("a", 3)], representation_dim=6).state_dict()), models


def data_for(merge, tasks, dtype=torch.float32) -> MergeData | None:
    if merge.data_need == "none":
        return None
    generators = {task: torch.Generator().manual_seed(5 + list(CLASSES).index(task)) for task in tasks}  # a task's data whatever the order
    inputs = {task: torch.randn(24, 5, generator=generators[task]).to(dtype) for task in tasks}
    return MergeData(inputs, {task: torch.randint(0, CLASSES[task], (24,), generator=generators[task]) for task in tasks})


def taken(name, models):
    """The task models the merge takes: as many as its ``models`` trait allows, in order."""
    most = MERGES[name].traits.get("models", (1, None))[1]
    return dict(list(models.items())[:most]) if most is not None else models


def run(name, base, models, **options):
    models = taken(name, models)
    merge = make_merge(name, **{**{k: v for k, v in SMALL.items() if k in MERGES[name].options()}, **options})
    return merge(base, models, data_for(merge, list(models), next(iter(base.values())).dtype))


def assert_weights(got, want, atol=1e-6):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=1e-5, msg=key)


def test_every_registered_merge_has_its_identity_law():
    assert set(IDENTITY) == set(MERGES), "declare in IDENTITY how a new merge gives identical task models back"


@pytest.mark.parametrize("name", list(MERGES))
def test_zero_task_vectors_give_the_base(name):
    base, models = task_models(scale=0.0)
    merged = run(name, base, models)
    for task in models:
        assert_weights(merged.for_task(task), base)


@pytest.mark.parametrize("name", list(MERGES))
def test_identical_task_models_give_that_model_back(name):
    copies, options = IDENTITY[name]
    base, models = task_models(seed=1)
    tuned = encoder_part(models["a"].state_dict())
    for model in models.values():  # every task model gets a's fine-tuned encoder and keeps its own head
        model.load_state_dict(tuned, strict=False)
    merged = run(name, base, {task: models[task] for task in list(CLASSES)[:copies]}, **options)
    for task in list(CLASSES)[:copies]:
        if name in KEEPS_PART:
            kept = {k: (w - base[k]) != 0 for k, w in merged.for_task(task).items()}
            exact = {k: (merged.for_task(task)[k] - tuned[k]).abs() <= 1e-6 for k in kept}
            total = sum(m.numel() for m in kept.values())
            assert sum(int(m.sum()) for m in kept.values()) >= 0.45 * total  # about the ratio kept
            assert all(bool(exact[k][kept[k]].float().mean() >= 0.9) for k in kept)  # as the model where kept
            continue
        if name not in FLATTENED:
            assert_weights(merged.for_task(task), tuned, atol=1e-5)
            continue
        for key, weight in merged.for_task(task).items():
            tau, got = tuned[key] - base[key], weight - base[key]
            if tau.dim() != 2:
                torch.testing.assert_close(got, tau, atol=1e-5, rtol=1e-5)
                continue
            u, s, vt = torch.linalg.svd(tau, full_matrices=False)
            torch.testing.assert_close(got, (u * s.mean()) @ vt, atol=1e-5, rtol=1e-5, msg=key)
            torch.testing.assert_close(torch.linalg.svdvals(got), s.mean().expand_as(s), atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("name", list(MERGES))
def test_keys_shapes_and_dtypes_are_the_bases_and_the_heads_stay_out(name):
    base, models = task_models(seed=2, dtype=torch.float64)
    merged = run(name, base, models)
    for task in models:
        weights = merged.for_task(task)
        assert list(weights) == list(base) and all((w.shape, w.dtype) == (base[k].shape, base[k].dtype) for k, w in weights.items())
        assert not any(key.startswith("heads.") for key in weights)


@pytest.mark.parametrize("name", list(MERGES))
def test_the_order_of_the_tasks_changes_nothing_or_the_merge_says_it_depends_on_it(name):
    base, models = task_models(seed=3)
    first = run(name, base, models)
    again = run(name, base, models)
    models = taken(name, models)
    reversed_order = run(name, base, dict(reversed(models.items())))
    for task in models:
        assert_weights(again.for_task(task), first.for_task(task), atol=0)  # the same inputs and seed, the same numbers
        if MERGES[name].traits.get("order_free", True):
            assert_weights(reversed_order.for_task(task), first.for_task(task), atol=1e-5)


@pytest.mark.parametrize("name", [n for n in MERGES if "lam" in MERGES[n].options()])
def test_a_merge_with_a_coefficient_lam_is_the_base_plus_lam_times_one_merged_task_vector(name):
    """θ(λ) = θ_0 + λ (θ(1) − θ_0): what lets a study sweep λ from one merge."""
    base, models = task_models(seed=7)
    at_one, at_lam = run(name, base, models, lam=1.0), run(name, base, models, lam=0.35)
    for task in taken(name, models):
        expected = {k: base[k] + 0.35 * (v - base[k]) for k, v in at_one.for_task(task).items()}
        assert_weights(at_lam.for_task(task), expected, atol=1e-6)


@pytest.mark.parametrize("name", list(MERGES))
def test_a_non_finite_task_model_is_refused_naming_it(name):
    base, models = task_models(seed=4)
    last = list(taken(name, models))[-1]  # a task model the merge reads
    with torch.no_grad():
        models[last].encoder[2].weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=rf"(NaN or infinite values.*'{last}': \['encoder.2.weight'\])|('encoder.2.weight' gave non-finite values .*\['{last}'\] hold NaN)"):
        run(name, base, models)


@pytest.mark.parametrize("name", list(MERGES))
def test_missing_data_is_refused_naming_what_the_merge_reads(name):
    base, models = task_models(seed=5)
    merge = make_merge(name)
    if merge.data_need == "none":
        given = {task: encoder_part(m.state_dict()) for task, m in taken(name, models).items()}
        merged = merge(base, given)  # weights alone suffice
        assert all(list(merged.for_task(task)) == list(base) for task in given)
        return
    with pytest.raises(ValueError, match=f"merge {name!r} reads {merge.data_need} data of every task"):
        merge(base, models)
    with pytest.raises(ValueError, match=r"give \['a', 'b', 'c'\] as nn.Modules"):
        merge(base, {task: m.state_dict() for task, m in models.items()}, data_for(merge, list(models)))
    with pytest.raises(ValueError, match=r"the data has none for \['c'\]"):
        merge(base, models, MergeData({task: torch.randn(4, 5) for task in ("a", "b")}))


@pytest.mark.parametrize("name", list(MERGES))
def test_an_unknown_option_is_refused_and_every_entry_states_what_it_is(name):
    with pytest.raises(ValueError, match=f"merge {name!r} has no options \\['no_such_option'\\]"):
        make_merge(name, no_such_option=1)
    entry = MERGES[name]
    assert entry.family in {"data-free", "localised", "data-dependent"} and entry.summary and entry.paper
    assert make_merge(name).data_need in {"none", "unlabelled", "labelled", "gradients"}


@pytest.mark.parametrize("name", [n for n in MERGES if MERGES[n].traits.get("models", (1, None)) != (1, None)])
def test_a_merge_of_a_fixed_number_of_models_refuses_another_number_naming_it(name):
    fewest, most = MERGES[name].traits["models"]
    base, models = task_models(seed=6)
    wrong = dict(list(models.items())[:fewest - 1]) if most is None or fewest > 1 else models
    wanted = f"exactly {fewest}" if fewest == most else f"at least {fewest}"
    with pytest.raises(ValueError, match=rf"{name} merges {wanted} models? beside the base; got {len(wrong)}"):
        make_merge(name)(base, wrong)
