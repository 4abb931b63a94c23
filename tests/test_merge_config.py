"""`workbench merge CONFIG OUT_DIR`: mergekit's YAML on model folders, equal to mergekit's merge of the same tensors, its dry run and refusals."""


import pytest
import torch
import yaml

from tests.test_model_folder import _fine_tuned, _save
from tests.test_encoders import tiny_bert
from workbench.cli import main
from workbench.merge.arithmetic import merge_task_vectors
from workbench.merge.config import dry_run, parse_size, read_merge_config
from workbench.merge.presets import preset_options
from workbench.weights.model_folder import open_model_folder
from workbench.weights.task_vectors import CHUNK, READ_CHUNKS


@pytest.fixture()
def folders(tmp_path):
    base = _save(tiny_bert(seed=0), tmp_path / "base")
    tasks = {f"task{k}": _save(_fine_tuned(10 + k), tmp_path / f"task{k}") for k in range(3)}
    return base, tasks


def _state(folder):
    weights = open_model_folder(folder)
    return {key: weights[key] for key in weights.keys()}


def _write(tmp_path, config, name="merge.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


WEIGHTS = [0.5, 1.0, 2.0]
CASES = {
    # name: (method, per-model parameters (weight added), global parameters, with a base)
    "linear": ("linear", {}, {}, False),
    "task_arithmetic": ("task_arithmetic", {}, {"lambda": 0.7}, True),
    "ties": ("ties", {"density": 0.3}, {"normalize": True, "lambda": 0.9, "int8_mask": True}, True),
    "ties_sum": ("ties", {"density": 0.5}, {"normalize": False}, True),
}


@pytest.mark.parametrize("case", CASES)
def test_a_mergekit_configuration_merges_as_mergekit_does_into_a_model_folder(case, folders, tmp_path, capsys):
    from mergekit.merge_methods.api import merge_state_dicts

    method, per_model, general, with_base = CASES[case]
    base, tasks = folders
    config = {"merge_method": method, "models": [{"model": p.name, "parameters": {"weight": w, **per_model}} for p, w in zip(tasks.values(), WEIGHTS)],
              "parameters": general, "dtype": "float32"}
    if with_base:
        config["base_model"] = "base"
    assert main(["merge", str(_write(tmp_path, config)), str(tmp_path / "merged"), "--max-shard-size", "6KB"]) == 0
    assert "wrote" in capsys.readouterr().out
    ours = _state(tmp_path / "merged")
    states = {label: _state(folder) for label, folder in tasks.items()}
    parameters = {**general, **per_model}
    parameters.pop("int8_mask", None)
    if with_base:
        theirs = merge_state_dicts({"base": _state(base), **states}, method, base="base", parameters={**parameters, "weight": dict(zip(states, WEIGHTS))})
    else:
        theirs = merge_state_dicts(list(states.values()), method, parameters={**parameters, "weight": WEIGHTS})
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key].to(ours[key].dtype), rtol=1e-5, atol=1e-6, msg=key)
    assert (tmp_path / "merged" / "config.json").is_file() and len(list((tmp_path / "merged").glob("model-*.safetensors"))) > 1


def test_the_workbenchs_own_methods_read_the_same_format_with_their_option_names(folders, tmp_path):
    base, tasks = folders
    config = {"merge_method": "dare", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()],
              "parameters": {"drop": 0.3, "lam": 0.8, "seed": 4}}
    assert main(["merge", str(_write(tmp_path, config)), str(tmp_path / "merged")]) == 0
    expected = merge_task_vectors(str(base), {k: str(v) for k, v in tasks.items()}, preset_options("dare", drop=0.3, lam=0.8, seed=4), progress=False)
    ours = _state(tmp_path / "merged")
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=0, atol=0)


def test_a_dry_run_prints_the_plan_and_writes_nothing(folders, tmp_path, capsys):
    base, tasks = folders
    config = {"merge_method": "ties", "base_model": "base", "models": [{"model": p.name, "parameters": {"density": 0.5}} for p in tasks.values()],
              "dtype": "float16"}
    path = _write(tmp_path, config)
    assert main(["merge", str(path), str(tmp_path / "merged"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "merged").exists()
    state = _state(base)
    floating = sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point())
    written = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in state.values())  # float16 out
    assert f"reads {4 * floating / 2**20:,.1f} MiB" in printed and f"writes {written / 2**20:,.1f} MiB" in printed
    assert f"tensors: {len(state)}" in printed and "method: ties" in printed and "task2" in printed


@pytest.mark.parametrize("change, message", [
    ({"merge_method": "frankenmerge"}, r"unknown merge_method 'frankenmerge'; mergekit's methods read here: \['breadcrumbs', 'breadcrumbs_ties', 'dare_linear'"),
    ({"parameters": {"densty": 0.5}}, r"parameters: unknown parameters \['densty'\] for ties; it reads \["),
    ({"models": [{"model": "task0", "parameters": {"density": 0.2}}, {"model": "task1", "parameters": {"density": 0.4}}]},
     r"the models' densities differ \(\[0.2, 0.4\]\)"),
    ({"merge_method": "linear"}, "linear merges the listed models and reads no base_model"),
    ({"tokenizer_source": "union"}, "tokenizer_source 'union' is not supported"),
    ({"models": [{"model": "nowhere"}]}, r"no model at \['.*nowhere'\]"),
    ({"dtype": "float8"}, r"unknown dtype 'float8'"),
    ({"slices": []}, r"slices \(mergekit's layer stacking.*are not read"),
    ({"merge_method": "tall"}, r"the others read data, or choose each task's λ_t on it, and run from Python: \[.*'tall'"),
])
def test_a_bad_configuration_is_refused_naming_what_is_wrong_before_anything_is_written(change, message, folders, tmp_path, capsys):
    base, tasks = folders
    config = {"merge_method": "ties", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()], **change}
    path = _write(tmp_path, config)
    with pytest.raises(ValueError, match=message):
        read_merge_config(path)
    assert main(["merge", str(path), str(tmp_path / "merged")]) == 2
    assert capsys.readouterr().err.startswith(f"workbench: {path}: ")
    assert not (tmp_path / "merged").exists()


def test_an_existing_output_folder_is_refused_and_left_alone(folders, tmp_path, capsys):
    base, tasks = folders
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    config = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()]}
    assert main(["merge", str(_write(tmp_path, config)), str(out)]) == 2
    assert "exists; a merge writes a new folder" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


def test_shard_sizes_read_as_transformers_writes_them():
    assert [parse_size(s) for s in ("5GB", "500MB", "2GiB", "1024", "1.5KB")] == [5 * 10**9, 500 * 10**6, 2 * 2**30, 1024, 1500]
    for bad in ("", "five", "0GB", "5PB"):
        with pytest.raises(ValueError, match="a size is a positive number with a unit"):
            parse_size(bad)


TENSOR_WISE = {
    # name: (config parameters global, per model (by position), how many models, a base, mergekit's models then includes it)
    "slerp": ({"t": 0.3}, [{}], True),
    "nuslerp": ({"nuslerp_flatten": False}, [{"weight": 1.0}, {"weight": 2.0}], True),
    "nuslerp_without_base": ({}, [{"weight": 3.0}, {"weight": 1.0}], False),
    "model_stock": ({}, [{}, {}, {}], True),
    "karcher": ({"max_iter": 5}, [{}, {}, {}], False),
    "breadcrumbs_ties": ({"density": 0.5, "gamma": 0.1, "lambda": 0.7}, [{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}], True),
    "breadcrumbs": ({"lambda": 0.7}, [{"weight": 1.0}, {"weight": 2.0}], True),  # mergekit's density 1 by default: nothing dropped
    "della": ({"lambda": 0.9}, [{"weight": 1.0}, {"weight": 0.5}, {"weight": 2.0}], True),
    "della_linear": ({"normalize": True}, [{"weight": 1.0}, {"weight": 3.0}], True),
    "sce": ({"select_topk": 0.5, "int8_mask": True}, [{}, {}, {}], True),
    "passthrough": ({"scale": 0.5}, [{}], False),
}


@pytest.mark.parametrize("method", TENSOR_WISE)
def test_mergekits_tensor_wise_methods_read_as_mergekit_does_and_merge_as_it_does(method, folders, tmp_path):
    from mergekit.merge_methods.api import merge_state_dicts

    general, per_model, with_base = TENSOR_WISE[method]
    method = method.removesuffix("_without_base")
    base, tasks = folders
    chosen = dict(list(tasks.items())[:len(per_model)])
    models = [{"model": p.name, **({"parameters": q} if q else {})} for p, q in zip(chosen.values(), per_model)]
    config = {"merge_method": method, "models": ([{"model": "base"}] if with_base else []) + models, "parameters": general}
    if with_base:
        config["base_model"] = "base"
    assert main(["merge", str(_write(tmp_path, config)), str(tmp_path / "merged")]) == 0
    ours = _state(tmp_path / "merged")
    states = {label: _state(folder) for label, folder in chosen.items()}
    parameters = dict(general)
    if any("weight" in q for q in per_model):
        parameters["weight"] = {label: q["weight"] for label, q in zip(states, per_model)} if with_base else [q["weight"] for q in per_model]
    if with_base:
        theirs = merge_state_dicts({"base": _state(base), **states}, method, base="base", parameters=parameters)
    else:
        theirs = merge_state_dicts(list(states.values()), method, parameters=parameters)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_tensor_wise_method_refuses_parameters_that_vary_by_layer_and_a_wrong_number_of_models(folders, tmp_path, capsys):
    base, tasks = folders
    config = {"merge_method": "slerp", "base_model": "base", "models": [{"model": "base"}, {"model": "task0"}],
              "parameters": {"t": [0.0, 0.5, 1.0]}}
    with pytest.raises(ValueError, match=r"parameters: \['t'\] vary by layer in mergekit"):
        read_merge_config(_write(tmp_path, config))
    config["parameters"] = {"t": 0.5}
    config["models"].append({"model": "task1"})
    assert main(["merge", str(_write(tmp_path, config)), str(tmp_path / "merged")]) == 2
    assert "slerp merges exactly 1 model beside the base; got 2" in capsys.readouterr().err and not (tmp_path / "merged").exists()


def test_a_streamed_whole_model_merge_runs_on_folders_as_it_does_in_memory_and_its_dry_run_counts_both_passes(folders, tmp_path, capsys):
    from workbench.merge import make_merge

    base, tasks = folders
    path = _write(tmp_path, {"merge_method": "metagpt", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()]})
    summary = dry_run(read_merge_config(path))
    state = _state(base)
    floating = sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point())
    others = sum(t.numel() * t.element_size() for t in state.values() if not t.is_floating_point())
    assert summary["bytes_read"] == 2 * 4 * floating + others  # the norms' pass and the merge's, each over the base and 3 models
    assert main(["merge", str(path), str(tmp_path / "merged")]) == 0
    expected = make_merge("metagpt")(state, {label: _state(folder) for label, folder in tasks.items()}).weights
    ours = _state(tmp_path / "merged")
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=0, atol=0, msg=key)
    bad = _write(tmp_path, {"merge_method": "metagpt", "base_model": "base", "models": [{"model": p.name, "parameters": {"weight": 2.0}} for p in tasks.values()]}, "bad.yaml")
    assert main(["merge", str(bad), str(tmp_path / "other")]) == 2
    assert "unknown parameters ['weight'] for metagpt" in capsys.readouterr().err and not (tmp_path / "other").exists()


@pytest.mark.parametrize("method, parameters", [("pcb", {"ratio": 0.2, "lam": 0.8}), ("emr", {})])
def test_a_merge_that_holds_the_whole_model_runs_on_folders_as_it_does_in_memory(method, parameters, folders, tmp_path):
    from workbench.merge import make_merge

    base, tasks = folders
    path = _write(tmp_path, {"merge_method": method, "base_model": "base", "models": [{"model": p.name} for p in tasks.values()],
                             "parameters": parameters, "dtype": "float32"})
    summary = dry_run(read_merge_config(path))
    state = _state(base)
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    served = len(tasks) if method == "emr" else 1
    assert summary["bytes_written"] == served * model_bytes
    assert main(["merge", str(path), str(tmp_path / "merged")]) == 0
    expected = make_merge(method, **parameters)(state, {label: _state(folder) for label, folder in tasks.items()})
    for task in tasks:
        folder = tmp_path / "merged" / task if method == "emr" else tmp_path / "merged"
        ours, theirs = _state(folder), expected.for_task(task)
        assert sorted(ours) == sorted(theirs) and (folder / "config.json").is_file()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    if method == "emr":
        assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == sorted(tasks)  # a folder per task, nothing else


def test_a_merge_that_reads_data_is_refused_by_the_command_naming_where_it_runs(folders, tmp_path, capsys):
    base, tasks = folders
    path = _write(tmp_path, {"merge_method": "regmean", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()]})
    assert main(["merge", str(path), str(tmp_path / "merged")]) == 2
    error = capsys.readouterr().err
    assert "unknown merge_method 'regmean'" in error and "run from Python: ['tall', 'consensus', 'fisher', 'regmean'" in error
    assert not (tmp_path / "merged").exists()


def test_a_merge_beyond_the_output_dtypes_range_is_refused_before_anything_is_written(folders, tmp_path, capsys):
    base, tasks = folders
    path = _write(tmp_path, {"merge_method": "passthrough", "models": [{"model": "task0"}], "parameters": {"scale": 1e6}, "dtype": "float16"})
    assert main(["merge", str(path), str(tmp_path / "merged")]) == 2
    assert "beyond the range of torch.float16" in capsys.readouterr().err and not (tmp_path / "merged").exists()


def test_a_tensor_wise_dry_run_expects_every_inputs_tensor_in_memory(folders, tmp_path, capsys):
    base, tasks = folders
    config = {"merge_method": "model_stock", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()]}
    path = _write(tmp_path, config)
    assert main(["merge", str(path), str(tmp_path / "merged"), "--dry-run"]) == 0
    largest = max(t.numel() for t in _state(base).values() if t.is_floating_point())
    # the base's and 3 models' tensors as read and stacked, two more of work, the merged tensor made and the one being written
    expected = (2 * 4 + 2) * 4 * largest + 2 * 4 * largest
    assert dry_run(read_merge_config(path))["peak_bytes"] == expected
    assert f"holds about {expected / 2**20:,.1f} MiB" in capsys.readouterr().out and not (tmp_path / "merged").exists()


def test_a_dry_run_of_the_core_expects_its_read_ahead_and_chunk_buffers(folders, tmp_path):
    base, tasks = folders
    path = _write(tmp_path, {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": p.name} for p in tasks.values()], "dtype": "float16"})
    largest = max(t.numel() for t in _state(base).values() if t.is_floating_point())
    chunk = min(CHUNK, largest)
    # two float16 merged tensors, two read-ahead blocks of the 4 float32 inputs, τ and its scratch of 3 models
    expected = 2 * 2 * largest + 2 * 4 * min(largest, chunk * READ_CHUNKS) * 4 + 2 * 3 * chunk * 4
    assert dry_run(read_merge_config(path))["peak_bytes"] == expected


