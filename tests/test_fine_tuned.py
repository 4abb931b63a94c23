"""Fine-tuned checkpoints to merge: built once per recipe, complete or rebuilt, plain safetensors."""

import json

import numpy as np
import pytest
import torch

from workbench.studies import fine_tuned
from workbench.studies.fine_tuned import Recipe, fine_tuned_checkpoints

RECIPE = Recipe("multidigits", ("left", "sum"), pretrain_steps=6, finetune_steps=4, options={"n_train": 300})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("checkpoints")
    return cache, fine_tuned_checkpoints(RECIPE, cache=cache, progress=False)


def test_each_task_fine_tunes_the_pretrained_encoder_and_keeps_its_own_head(built):
    _, files = built
    base, left = files.load("base"), files.load("left")
    assert set(left) == {k for k in base if k.startswith("encoder.")} | {k for k in base if k.startswith("heads.left.")}
    assert any(not torch.equal(base[k], left[k]) for k in left if k.startswith("encoder."))
    assert any(k.startswith("heads.sum.") for k in base) and not any(k.startswith("heads.sum.") for k in left)
    manifest = json.loads((files.folder / fine_tuned.MANIFEST).read_text())
    assert manifest["key"] == RECIPE.key() and manifest["files"] == ["base.safetensors", "left.safetensors", "sum.safetensors"]


def test_a_cached_recipe_is_reused_and_a_changed_one_gets_its_own_folder(built, monkeypatch):
    cache, files = built
    monkeypatch.setattr("workbench.studies.problems.load_problem", lambda *a, **k: pytest.fail("the cache was not reused"))
    assert fine_tuned_checkpoints(RECIPE, cache=cache, progress=False) == files
    changed = Recipe("multidigits", ("left", "sum"), pretrain_steps=6, finetune_steps=5, options={"n_train": 300})
    assert changed.key() != RECIPE.key()
    assert Recipe("multidigits", ("left", "sum"), pretrain_steps=6, finetune_steps=4, options={"n_train": 300}).key() == RECIPE.key()


def test_a_folder_without_its_manifest_is_built_again(tmp_path):
    recipe = Recipe("multidigits", ("left", "right"), pretrain_steps=0, finetune_steps=2, options={"n_train": 200})
    first = fine_tuned_checkpoints(recipe, cache=tmp_path, progress=False)
    (first.folder / fine_tuned.MANIFEST).unlink()
    first.tasks["right"].unlink()  # as if killed while fine-tuning
    again = fine_tuned_checkpoints(recipe, cache=tmp_path, progress=False)
    assert again.tasks["right"].exists() and (again.folder / fine_tuned.MANIFEST).exists()
    torch.testing.assert_close(again.load("left"), first.load("left"))  # same recipe, same numbers


def test_merged_encoders_serve_every_task_and_are_scored_against_the_individual_models(built):
    from workbench.merge import make_merge
    from workbench.studies.merged_models import encoder_part, individual_model, merged_model, normalised_scores
    from workbench.studies.problems import load_problem

    _, files = built
    problem = load_problem(RECIPE.dataset, seed=RECIPE.seed, tasks=list(RECIPE.tasks), **RECIPE.options)
    tasks = {t: files.load(t) for t in RECIPE.tasks}
    individual = {t: individual_model(problem, t, state) for t, state in tasks.items()}
    averaged = make_merge("task_arithmetic")(encoder_part(files.load("base")), individual).weights
    models = {"left's encoder": merged_model(problem, encoder_part(tasks["left"]), tasks), "task arithmetic": merged_model(problem, averaged, tasks)}
    scores = normalised_scores(problem, models, individual)
    assert scores.normalised.dims == ("model", "task")
    assert float(scores.normalised.sel(model="left's encoder", task="left")) == pytest.approx(1.0)  # left's own model, rebuilt
    assert np.isfinite(scores.normalised.values).all() and (scores.normalised.values > 0).all()
    with pytest.raises(ValueError, match="tensors the model lacks"):
        merged_model(problem, {"encoder.nowhere": torch.zeros(1)}, tasks)


def test_published_ordering_is_checked_on_the_strict_steps_only():
    import xarray as xr

    from workbench.studies.merging import published_ordering

    def scores(**means):
        return xr.Dataset({"normalised": (("model", "task"), [[v] for v in means.values()])}, coords={"model": list(means), "task": ["a"]})

    holds = scores(task_arithmetic=0.8, ties=0.85, layer_wise_adamerging=0.95, regmean=0.94)
    assert published_ordering(holds).endswith("holds here")
    assert published_ordering(scores(task_arithmetic=0.9, ties=0.85, regmean=0.94)).endswith("does not hold here")
    assert published_ordering(scores(task_arithmetic=0.8, ties=1.02, regmean=0.94)).endswith("does not hold here")  # above the individual models


def test_the_published_data_free_ordering_needs_both_svd_merges_above_ties_above_task_arithmetic():
    import xarray as xr

    from workbench.studies.merging import published_data_free_ordering

    def scores(**means):
        return xr.Dataset({"normalised": (("model", "task"), [[v] for v in means.values()])}, coords={"model": list(means), "task": ["a"]})

    assert published_data_free_ordering(scores(task_arithmetic=0.8, ties=0.85, tsv_merge=0.9, iso_cts=0.88)).endswith("holds here")
    assert published_data_free_ordering(scores(task_arithmetic=0.8, ties=0.85, tsv_merge=0.9, iso_cts=0.84)).endswith("does not hold here")
    assert published_data_free_ordering(scores(task_arithmetic=0.86, ties=0.85, tsv_merge=0.9, iso_cts=0.88)).endswith("does not hold here")


def test_a_curve_still_rising_at_the_grids_end_is_swept_further(built):
    from workbench.studies.merging import lambda_curves, load_merge_set, swept_scores

    cache, _ = built
    merges = load_merge_set(RECIPE, cache=str(cache), progress=False)
    curve = swept_scores(merges, "task_arithmetic", [0.02, 0.04], extend_to=2.0)
    lams = [float(lam) for lam in curve.model.values]
    assert lams[:2] == [0.02, 0.04] and np.allclose(np.diff(lams), 0.02)
    best = int(np.argmax(curve.mean("task").values))
    assert len(lams) > 2 and (best < len(lams) - 1 or lams[-1] + 0.02 > 2.0)  # swept on until the best is inside the grid
    for k in (0, len(lams) - 1):
        np.testing.assert_allclose(curve.isel(model=k).values, swept_scores(merges, "task_arithmetic", [lams[k]]).isel(model=0).values)
    with pytest.raises(ValueError, match="the λ grid must increase"):
        swept_scores(merges, "ties", [0.5, 0.3])
    curves = lambda_curves(merges, [0.02, 0.04], extend_to=0.1)
    assert set(curves.attrs["at_edge"]) <= set(curves.method.values) and float(curves.lam.max()) <= 0.1 + 1e-9
    for method in curves.attrs["at_edge"]:
        mean = curves["mean"].sel({"method": method}).dropna("lam")  # sel(method=...) is sel's own option
        assert float(mean.lam[int(np.argmax(mean.values))]) == float(mean.lam[-1])


def test_density_curves_sweep_every_merge_with_a_kept_fraction_at_its_best_lambda(built):
    from workbench.merge import MERGES, make_merge
    from workbench.studies.merging import density_curves, density_merges, lambda_curves, load_merge_set

    cache, _ = built
    merges = load_merge_set(RECIPE, cache=str(cache), progress=False)
    found = density_merges()
    assert {"ties": "density", "dare": "drop", "della": "density", "sce": "select_topk", "pcb": "ratio"}.items() <= found.items()
    assert all(MERGES[name].traits["data"] == "none" for name in found) and "task_arithmetic" not in found
    curves = lambda_curves(merges, [0.3, 1.0], extend_to=None)
    densities = density_curves(merges, curves, [0.1, 0.5])
    assert list(densities.method.values) == list(found) and list(densities.density.values) == [0.1, 0.5]
    assert "della@0.1" in densities.attrs["refused"]  # density − ε = −0.05: DELLA refuses it
    assert np.isnan(densities["mean"].sel({"method": "della", "density": 0.1})) and not np.isnan(densities["mean"].sel({"method": "della", "density": 0.5}))
    lam = float(curves.lam[int(np.argmax(curves["mean"].sel({"method": "dare"}).values))])
    served = merges.model(make_merge("dare", lam=lam, drop=0.9)(merges.base, merges.individual).weights)  # kept 0.1: DARE drops 0.9
    expected = merges.scores({"x": served}, "validation").normalised.isel(model=0).values
    np.testing.assert_allclose(densities.normalised.sel({"method": "dare", "density": 0.1}).values, expected)


def test_the_explorer_merges_live_and_falls_back_to_the_precomputed_curves_in_a_batch_run(built, monkeypatch):
    from workbench import viz
    from workbench.studies.merging import lambda_curves, load_merge_set, swept_merges, swept_scores

    cache, _ = built
    merges = load_merge_set(RECIPE, cache=str(cache), progress=False)
    curves = lambda_curves(merges, [0.3, 1.0])
    assert list(curves.method.values) == swept_merges()
    assert {"task_arithmetic", "ties", "dare", "breadcrumbs", "della", "magmax", "tsv_merge", "iso_cts"} <= set(swept_merges())
    assert not {"average", "sce", "model_stock", "metagpt", "fisher"} & set(swept_merges())  # no λ to sweep
    one = swept_scores(merges, "ties", [1.0]).isel(model=0)
    np.testing.assert_allclose(one.values, curves.normalised.sel({"method": "ties", "lam": 1.0}).values)
    with pytest.raises(ValueError, match="unknown swept method 'fisher'"):
        swept_scores(merges, "fisher", [1.0])

    asked = []

    def score(method, lam):
        asked.append((method, lam))
        return swept_scores(merges, method, [lam]).isel(model=0)

    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
    monkeypatch.setenv("WORKBENCH_PROGRESS", "0")  # quiet is not a batch run: the explorer stays live
    explorer = viz.merge_explorer(score, curves, "digits")
    menu, slider = explorer.children[0].children
    slider.value = 0.8
    menu.value = "dare"
    assert asked == [("task_arithmetic", 0.3), ("task_arithmetic", 0.8), ("dare", 0.8)]
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    figure = viz.merge_explorer(score, curves, "digits")
    assert len(figure.data) == len(swept_merges()) * 2 and [b.label for b in figure.layout.updatemenus[0].buttons] == swept_merges()
    assert len(asked) == 3  # nothing merged in a batch run
