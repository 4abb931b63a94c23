"""Where the workbench keeps its caches: one data folder, whatever folder the kernel runs in."""

from pathlib import Path

import pytest

from workbench import paths

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_setting(monkeypatch):
    monkeypatch.delenv(paths.DATA_VARIABLE, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def test_in_a_source_checkout_the_data_folder_is_the_projects_wherever_the_kernel_runs(tmp_path, monkeypatch):
    for folder in (ROOT, ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(folder)
        assert paths.data_dir() == ROOT / "data"
        assert paths.data_dir("checkpoints") == ROOT / "data" / "checkpoints"
        assert paths.data_dir("checkpoints", "multidigits-1234") == ROOT / "data" / "checkpoints" / "multidigits-1234"


def test_the_setting_names_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_VARIABLE, str(tmp_path / "cache"))
    assert paths.data_dir("checkpoints") == tmp_path / "cache" / "checkpoints"
    monkeypatch.setenv(paths.DATA_VARIABLE, "~/workbench-data")
    assert paths.data_dir() == Path.home() / "workbench-data"


def test_a_relative_setting_is_refused_since_every_kernel_runs_in_another_folder(monkeypatch):
    monkeypatch.setenv(paths.DATA_VARIABLE, "data")
    with pytest.raises(ValueError, match="WORKBENCH_DATA must be an absolute path, got 'data'"):
        paths.data_dir()


def test_an_empty_setting_counts_as_unset(monkeypatch):
    monkeypatch.setenv(paths.DATA_VARIABLE, "")
    assert paths.data_dir() == ROOT / "data"


def test_a_relative_path_lies_in_the_data_folder_and_an_absolute_one_is_kept(tmp_path):
    assert paths.data_dir("my/checkpoints") == ROOT / "data" / "my" / "checkpoints"
    assert paths.data_dir(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    assert paths.data_dir("") == ROOT / "data"


def test_an_installed_package_caches_in_the_users_cache_folder(tmp_path, monkeypatch):
    installed = tmp_path / "site-packages" / "workbench"
    installed.mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE", installed)
    assert paths.data_dir("checkpoints") == Path.home() / ".cache" / "workbench" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.data_dir() == tmp_path / "xdg" / "workbench"
    (tmp_path / "site-packages" / "pyproject.toml").write_text('[project]\nname = "another"\n')
    assert paths.data_dir() == tmp_path / "xdg" / "workbench", "another project's pyproject.toml is not this checkout"


def test_the_merge_studies_cache_in_the_data_folder_by_default(tmp_path, monkeypatch):
    import inspect

    from workbench.studies import fine_tuned, merging

    recipe = fine_tuned.Recipe("multidigits", ("left", "sum"), pretrain_steps=6, finetune_steps=4, options={"n_train": 300})
    folder = tmp_path / "data" / "checkpoints" / f"multidigits-{recipe.key()}"
    folder.mkdir(parents=True)
    (folder / fine_tuned.MANIFEST).write_text("{}")  # a complete cache: nothing is built
    monkeypatch.setenv(paths.DATA_VARIABLE, str(tmp_path / "data"))
    monkeypatch.chdir(ROOT / "notebooks")
    assert fine_tuned.fine_tuned_checkpoints(recipe, progress=False).folder == folder
    assert inspect.signature(merging.load_merge_set).parameters["cache"].default is None


def test_a_relative_cache_home_is_ignored(tmp_path, monkeypatch):
    installed = tmp_path / "site-packages" / "workbench"
    installed.mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE", installed)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert paths.data_dir() == Path.home() / ".cache" / "workbench"
