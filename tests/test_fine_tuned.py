"""Fine-tuned checkpoints to merge: built once per recipe, complete or rebuilt, plain safetensors."""

import json

import pytest
import torch

from workbench.merge import fine_tuned
from workbench.merge.fine_tuned import Recipe, fine_tuned_checkpoints

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
    monkeypatch.setattr("workbench.problems.load_problem", lambda *a, **k: pytest.fail("the cache was not reused"))
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
