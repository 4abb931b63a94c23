"""Hugging Face model folders as merge inputs and outputs: sharded or single, loadable after the merge, bad folders refused."""

import json
import shutil

import pytest
import torch
import transformers

from tests.test_encoders import tiny_bert, token_batch
from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.weights.model_folder import SAFETENSORS_INDEX, open_model_folder, shard_plans
from workbench.weights.state_dicts import TensorPlan, open_weights

SHARD = "8KB"  # a tiny BERT is ~18 kB: three shards


def _fine_tuned(seed: int) -> torch.nn.Module:
    model = tiny_bert(seed=0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _save(model, folder, shard=SHARD, **options):
    model.save_pretrained(folder, max_shard_size=shard, safe_serialization=True, **options)
    tokenizer = folder / "vocab.txt"
    tokenizer.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]))
    return folder


@pytest.fixture()
def folders(tmp_path):
    base = _save(tiny_bert(seed=0), tmp_path / "base")
    tasks = {f"task{k}": _save(_fine_tuned(10 + k), tmp_path / f"task{k}", shard="1GB" if k == 1 else SHARD) for k in range(2)}
    return base, tasks


def test_a_sharded_folder_reads_as_the_models_state_dict_each_tensor_from_its_shard(folders):
    base, _ = folders
    weights = open_model_folder(base)
    assert (base / SAFETENSORS_INDEX).is_file() and len(weights.shards) > 1
    state = tiny_bert(seed=0).state_dict()
    assert sorted(weights.keys()) == sorted(k for k in state if k in weights)  # save_pretrained leaves out tied or buffered names alike
    for key in weights.keys():
        torch.testing.assert_close(weights[key], state[key], rtol=0, atol=0)
    key = next(iter(weights.keys()))
    torch.testing.assert_close(weights.read(key, 3, 9), state[key].reshape(-1)[3:9], rtol=0, atol=0)
    assert open_weights(base).keys() == weights.keys()


def test_a_merge_of_folders_writes_a_folder_that_transformers_loads_with_the_merged_outputs(folders, tmp_path):
    base, tasks = folders
    options = MergeOptions(lam=0.5)
    merged = merge_task_vectors(base, tasks, options, progress=False)  # in memory: the reference
    out = merge_task_vectors(base, tasks, options, out=tmp_path / "merged", max_shard_bytes=6_000, progress=False)
    index = json.loads((out / SAFETENSORS_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1 and (out / "config.json").is_file() and (out / "vocab.txt").is_file()
    assert not list(tmp_path.glob(".merged.staging-*"))
    loaded = transformers.AutoModel.from_pretrained(out).eval()
    reference = tiny_bert(seed=0).eval()
    reference.load_state_dict(merged, strict=False)
    ids = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state, rtol=1e-6, atol=1e-6)
    single = merge_task_vectors(base, tasks, options, out=tmp_path / "single", progress=False)  # the default limit: one file
    assert sorted(p.name for p in single.glob("*.safetensors")) == ["model.safetensors"] and not (single / SAFETENSORS_INDEX).exists()
    weights = open_model_folder(single)
    for key in weights.keys():
        torch.testing.assert_close(weights[key], merged[key], rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="exists; a merge writes a new folder"):
        merge_task_vectors(base, tasks, options, out=single, progress=False)


def test_a_sentence_transformers_folder_merges_as_a_whole_model_and_loads_with_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from workbench.models import minilm_path

    source = minilm_path()
    base = tmp_path / "minilm"
    shutil.copytree(source, base)
    tasks = {}
    for k in range(2):
        folder = tmp_path / f"task{k}"
        shutil.copytree(source, folder)
        tasks[f"task{k}"] = folder
    out = merge_task_vectors(base, tasks, MergeOptions(lam=0.5), out=tmp_path / "merged", progress=False)
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    sentences = ["a merged model", "still embeds"]
    original = SentenceTransformer(str(source), device="cpu").encode(sentences, convert_to_tensor=True)
    merged = SentenceTransformer(str(out), device="cpu").encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(merged, original, rtol=1e-5, atol=1e-5)  # equal task vectors of zero: the base itself


def test_an_index_naming_a_missing_shard_or_disagreeing_with_its_shards_is_refused(folders, tmp_path):
    base, _ = folders
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    index = json.loads((broken / SAFETENSORS_INDEX).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (broken / shard).unlink()
    with pytest.raises(ValueError, match=rf"names shards that are missing from the folder: \{{'{shard}': \d+\}}"):
        open_model_folder(broken)
    shutil.rmtree(broken)
    shutil.copytree(base, broken)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = shard if index["weight_map"][key] != shard else sorted(set(index["weight_map"].values()))[0]
    (broken / SAFETENSORS_INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"disagrees with {SAFETENSORS_INDEX}: it lacks \['{key}'\]"):
        open_model_folder(broken)
    (broken / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match="names shards outside the folder"):
        open_model_folder(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds no model weights .* it holds \['config.json'\]"):
        open_model_folder(empty)


def test_models_of_another_architecture_are_refused_naming_the_fields_and_another_tokenizer_warns(folders, tmp_path):
    base, tasks = folders
    wider = tmp_path / "other"
    shutil.copytree(tasks["task0"], wider)
    config = json.loads((wider / "config.json").read_text())
    config["num_attention_heads"], config["_name_or_path"] = 3, "somewhere else"
    (wider / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"differs from .*'s in \{'num_attention_heads': \(2, 3\)\}"):
        merge_task_vectors(base, {"other": wider, "task1": tasks["task1"]}, MergeOptions(), out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    config["num_attention_heads"] = 2
    (wider / "config.json").write_text(json.dumps(config))  # the name alone differs: no architecture field
    (wider / "vocab.txt").write_text("another\nvocabulary\n")
    with pytest.warns(UserWarning, match=r"another tokenizer than the base: \['vocab.txt'\] differ"):
        merge_task_vectors(base, {"other": wider, "task1": tasks["task1"]}, MergeOptions(), progress=False)


def test_a_folder_of_pickles_loads_plain_tensors_only(tmp_path):
    model = tiny_bert(seed=0)
    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save(model.state_dict(), plain / "pytorch_model.bin")
    weights = open_model_folder(plain)
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(weights[key], tensor, rtol=0, atol=0)
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, crafted / "pytorch_model.bin")
    with pytest.raises(ValueError, match="needs full unpickling, which can run arbitrary code, so it is not loaded"):
        open_model_folder(crafted)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_an_interrupted_merge_leaves_no_folder_and_shards_respect_their_limit(folders, tmp_path):
    base, tasks = folders
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tasks["task0"], poisoned)
    model = _fine_tuned(10)
    with torch.no_grad():
        model.encoder.layer[-1].output.dense.weight[0, 0] = float("nan")  # a late tensor: shards before it are written
    shutil.rmtree(poisoned)
    _save(model, poisoned)
    with pytest.raises(ValueError, match="non-finite values"):
        merge_task_vectors(base, {"poisoned": poisoned, "task1": tasks["task1"]}, MergeOptions(), out=tmp_path / "merged",
                           max_shard_bytes=4_000, progress=False)
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.staging-*"))
    plans = [TensorPlan(f"t{i}", (n,), torch.float32, "merge") for i, n in enumerate([10, 10, 30, 5])]
    assert [[p.name for p in shard] for shard in shard_plans(plans, 80)] == [["t0", "t1"], ["t2"], ["t3"]]  # 120 bytes: a shard of its own
    with pytest.raises(ValueError, match="max_shard_bytes must be a positive number of bytes"):
        shard_plans(plans, 0)
