"""Model merging: the registered presets against mergekit, DARE against its definition, the generalised core's laws,
checkpoint IO and refusals, TALL masks. (Every registered merge also passes the laws of test_merge_laws.py.)"""

import pickle
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from workbench.merge import MergeOptions, choose_tall_lambdas, consensus_merge, make_merge, merge_task_vectors, merge_tensor, retrieve, tall_masks
from workbench.weights.state_dicts import open_weights, plan, write_safetensors
from workbench.weights.task_vectors import TaskMasks, magnitude_thresholds

SHAPES = {"encoder.weight": (6, 5), "encoder.bias": (6,), "head.weight": (2, 3, 4)}


def random_models(n_tasks=3, seed=0, dtype=torch.float32, scale=0.1):
    """A base state dict (with an integer buffer) and ``n_tasks`` fine-tuned ones named t0, t1, ..."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    base["position_ids"] = torch.arange(7)
    tasks = {}
    for i in range(n_tasks):
        tasks[f"t{i}"] = {k: (v + scale * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone() for k, v in base.items()}
    cast = lambda sd: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return cast(base), {name: cast(sd) for name, sd in tasks.items()}


TA = MergeOptions(lam=0.3)
TIES = MergeOptions(density=0.2, trim="model", elect_sign=True, combine="mean")  # the paper's options
DARE = MergeOptions(drop=0.5, lam=0.3)


def core(tasks, base, options, **kwargs):
    """The generalised merge of ``tasks`` around ``base`` with ``options``."""
    return merge_task_vectors(base, tasks, options, progress=False, **kwargs)


def registered(name, base, tasks, **options):
    """The weights of the registered merge ``name``."""
    return make_merge(name, **options)(base, tasks).weights


def assert_close(a, b, atol=1e-6):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# ---- the presets against mergekit ----

WEIGHTS = [0.5, 1.0, 2.0]
MERGEKIT_CASES = {
    # case: (mergekit method, mergekit parameters, registered merge and its options, with a base)
    "average": ("linear", {"weight": WEIGHTS}, ("average", {"weights": WEIGHTS}), False),
    "task_arithmetic": ("task_arithmetic", {"weight": WEIGHTS, "lambda": 0.7}, ("task_arithmetic", {"lam": 0.7, "weights": WEIGHTS}), True),
    "ties_disjoint_mean": (
        "ties", {"weight": WEIGHTS, "density": 0.3, "normalize": True, "lambda": 0.9},
        ("ties", {"trim": "tensor", "density": 0.3, "combine": "mean", "lam": 0.9, "weights": WEIGHTS}), True,
    ),
    "ties_disjoint_sum": (
        "ties", {"weight": WEIGHTS, "density": 0.3, "normalize": False},
        ("ties", {"trim": "tensor", "density": 0.3, "combine": "sum", "weights": WEIGHTS}), True,
    ),
}


@pytest.mark.parametrize("case", MERGEKIT_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_presets_equal_mergekit(case, seed):
    from mergekit.merge_methods.api import merge_state_dicts

    method, parameters, (name, options), with_base = MERGEKIT_CASES[case]
    base, tasks = random_models(seed=seed)
    if with_base:
        weights = dict(zip(tasks, parameters["weight"]))
        theirs = merge_state_dicts({"base": base, **tasks}, method, base="base", parameters={**parameters, "weight": weights})
    else:
        theirs = merge_state_dicts(list(tasks.values()), method, parameters=parameters)
    ours = registered(name, base, tasks, **options)
    assert_close(ours, {k: theirs[k] for k in ours})


# ---- DARE: the definition and its laws ----

def test_dare_follows_its_definition():
    base, tasks = random_models()
    cutoff = round(0.4 * 65536)  # a 16-bit word below this drops its entry
    expected = {}
    for key, theta0 in base.items():
        if not theta0.is_floating_point():
            expected[key] = theta0
            continue
        kept = []
        for t, task in enumerate(tasks.values()):
            bits = np.random.PCG64(np.random.SeedSequence([3, zlib.crc32(key.encode()), t]))
            words = bits.random_raw(theta0.numel()).astype("<u8").view("<u2")[: theta0.numel()]
            keep = torch.from_numpy(words.astype(np.int64) >= cutoff).reshape(theta0.shape)
            kept.append((task[key] - theta0) * keep / (1 - cutoff / 65536))
        expected[key] = theta0 + 0.8 * sum(kept)
    assert_close(registered("dare", base, tasks, drop=0.4, lam=0.8, seed=3), expected)


def test_dare_without_dropping_is_task_arithmetic():
    base, tasks = random_models()
    assert_close(registered("dare", base, tasks, drop=0.0), registered("task_arithmetic", base, tasks))


def test_dare_is_reproducible_by_seed():
    base, tasks = random_models()
    first = registered("dare", base, tasks, seed=7)
    assert_close(registered("dare", base, tasks, seed=7), first)
    assert not torch.equal(registered("dare", base, tasks, seed=8)["encoder.weight"], first["encoder.weight"])


def test_dare_preserves_the_expected_task_vector():
    g = torch.Generator().manual_seed(0)
    base, tasks = torch.zeros(200), [torch.randn(200, generator=g) for _ in range(2)]
    n = 4000
    mean = torch.stack([merge_tensor(base, tasks, MergeOptions(drop=0.7, seed=seed)) for seed in range(n)]).mean(0)
    # each kept entry is τ/(1 − p): variance τ² p/(1 − p) per draw; the mean of n draws is within 5 standard errors
    standard_error = ((tasks[0] ** 2 + tasks[1] ** 2) * 0.7 / 0.3 / n).sqrt()
    assert ((mean - (tasks[0] + tasks[1])).abs() <= 5 * standard_error).all()


def test_dare_l1_rescaling_keeps_each_task_vectors_l1_norm():
    g = torch.Generator().manual_seed(0)
    base, task = torch.randn(50, generator=g), torch.randn(50, generator=g)
    merged = merge_tensor(base, [task], MergeOptions(drop=0.6, rescale="l1"))
    torch.testing.assert_close((merged - base).abs().sum(), (task - base).abs().sum())
    assert (merged - base == 0).sum() > 10


# ---- trimming and sign election ----

def test_model_wide_trimming_keeps_the_top_fraction_of_the_whole_model():
    base, tasks = random_models(n_tasks=1)
    merged = core(tasks, base, MergeOptions(density=0.25, trim="model"))
    floating = [k for k in SHAPES]
    kept = sum(int((merged[k] != base[k]).sum()) for k in floating)
    total = sum(base[k].numel() for k in floating)
    assert kept == int(0.25 * total)
    changes = torch.cat([(tasks["t0"][k] - base[k]).abs().flatten() for k in floating])
    smallest_kept = min(float((tasks["t0"][k] - base[k]).abs()[merged[k] != base[k]].min()) for k in floating)
    assert smallest_kept == pytest.approx(float(changes.topk(kept).values.min()))


def test_model_thresholds_are_the_kth_largest_magnitudes():
    base, tasks = random_models(n_tasks=2)
    checkpoints = [open_weights(sd, name) for name, sd in tasks.items()]
    thresholds = magnitude_thresholds(open_weights(base), checkpoints, list(SHAPES), density=0.1)
    for threshold, sd in zip(thresholds, tasks.values()):
        magnitudes = torch.cat([(sd[k] - base[k]).abs().flatten() for k in SHAPES])
        assert threshold == magnitudes.topk(int(0.1 * len(magnitudes))).values.min()


def test_sign_election_keeps_only_the_elected_sign():
    base = torch.zeros(3)
    tasks = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, 1.0, 0.5])]
    mean = merge_tensor(base, tasks, MergeOptions(elect_sign=True, combine="mean"))
    total = merge_tensor(base, tasks, MergeOptions(elect_sign=True))
    torch.testing.assert_close(mean, torch.tensor([-3.0, -2.0, 0.5]))
    torch.testing.assert_close(total, torch.tensor([-3.0, -2.0, 1.0]))


def test_per_tensor_weights_scale_each_tensor():
    base, tasks = random_models(n_tasks=2)
    weights = {"encoder.weight": [1.0, 0.0], "encoder.bias": [0.0, 1.0], "head.weight": [0.5, 0.5]}
    merged = core(tasks, base, MergeOptions(weights=weights))
    torch.testing.assert_close(merged["encoder.weight"], tasks["t0"]["encoder.weight"])
    torch.testing.assert_close(merged["encoder.bias"], tasks["t1"]["encoder.bias"])
    torch.testing.assert_close(merged["head.weight"], (tasks["t0"]["head.weight"] + tasks["t1"]["head.weight"]) / 2)
    with pytest.raises(ValueError, match="no weights for tensor 'head.weight'"):
        core(tasks, base, MergeOptions(weights={"encoder.weight": [1, 1], "encoder.bias": [1, 1]}))


# ---- laws ----

options_strategy = st.builds(
    MergeOptions,
    density=st.sampled_from([1.0, 0.5, 0.1]),
    trim=st.sampled_from(["tensor", "model"]),
    elect_sign=st.booleans(),
    combine=st.sampled_from(["sum", "mean"]),
)


@settings(deadline=None)
@given(options=options_strategy, seed=st.integers(0, 100), n_tasks=st.integers(1, 4))
def test_lambda_zero_gives_the_base(options, seed, n_tasks):
    base, tasks = random_models(n_tasks, seed)
    merged = core(tasks, base, MergeOptions(**{**options.__dict__, "lam": 0.0}))
    assert_close(merged, base, atol=0)


@settings(deadline=None)
@given(seed=st.integers(0, 100), elect_sign=st.booleans(), combine=st.sampled_from(["sum", "mean"]))
def test_one_task_with_lambda_one_gives_that_model(seed, elect_sign, combine):
    base, tasks = random_models(1, seed)
    merged = core(tasks, base, MergeOptions(elect_sign=elect_sign, combine=combine))
    assert_close(merged, tasks["t0"])


@settings(deadline=None)
@given(seed=st.integers(0, 100), n_tasks=st.integers(1, 5), with_base=st.booleans())
def test_averaging_identical_models_gives_the_model(seed, n_tasks, with_base):
    base, tasks = random_models(1, seed)
    copies = {f"c{i}": tasks["t0"] for i in range(n_tasks)}
    assert_close(core(copies, base if with_base else None, MergeOptions(combine="mean")), tasks["t0"])


# ---- checkpoints: files, dtypes, refusals ----

def save_all(tmp_path, base, tasks):
    save_file(base, str(tmp_path / "base.safetensors"))
    for name, sd in tasks.items():
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
    return tmp_path / "base.safetensors", [tmp_path / f"{name}.safetensors" for name in tasks]


def test_safetensors_files_merge_like_state_dicts_and_the_output_file_is_valid(tmp_path):
    base, tasks = random_models()
    base_path, task_paths = save_all(tmp_path, base, tasks)
    in_memory = core(tasks, base, TIES)
    assert_close(in_memory, registered("ties", base, tasks), atol=0)
    out = core(dict(zip(tasks, task_paths)), base_path, TIES, out=tmp_path / "merged.safetensors")
    written = load_file(str(out))
    assert_close({k: written[k] for k in in_memory}, in_memory, atol=0)


def test_modules_merge_like_their_state_dicts():
    base, tasks = random_models(n_tasks=2)
    modules = {}
    for name, sd in tasks.items():
        modules[name] = torch.nn.Module()
        for key, value in sd.items():
            modules[name].register_buffer(key.replace(".", "_"), value)
    renamed = lambda sd: {k.replace(".", "_"): v for k, v in sd.items()}
    expected = core({n: renamed(sd) for n, sd in tasks.items()}, renamed(base), TA)
    assert_close(core(modules, renamed(base), TA), expected, atol=0)


def test_weights_only_pickle_merges_like_its_state_dict(tmp_path):
    base, tasks = random_models(n_tasks=2)
    torch.save(tasks["t0"], tmp_path / "t0.pt")
    torch.save(tasks["t1"], tmp_path / "t1.bin", _use_new_zipfile_serialization=False)
    assert_close(core([tmp_path / "t0.pt", tmp_path / "t1.bin"], base, TA), core(tasks, base, TA), atol=0)


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_a_pickle_needing_full_unpickling_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "extra": Payload()}, path)
    with pytest.raises(ValueError, match="model.pt needs full unpickling.*not loaded"):
        open_weights(path)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="raw.bin needs full unpickling"):
        open_weights(raw)
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        open_weights(path.rename(tmp_path / "model.pkl"))


def test_mismatched_keys_shapes_and_dtypes_name_the_tensor_and_files(tmp_path):
    base, tasks = random_models(n_tasks=2)
    bad = dict(tasks["t1"], **{"encoder.bias": torch.zeros(5)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"'encoder.bias' is \[6\] torch.float32 in base but \[5\] torch.float32 in .*bad.safetensors"):
        core([tasks["t0"], tmp_path / "bad.safetensors"], base, TA)
    with pytest.raises(ValueError, match=r"'encoder.bias' is \[6\] torch.float32 in base but \[6\] torch.float16 in t1"):
        core({"t0": tasks["t0"], "t1": dict(tasks["t1"], **{"encoder.bias": torch.zeros(6, dtype=torch.float16)})}, base, TA)
    missing = {k: v for k, v in tasks["t1"].items() if k != "head.weight"}
    with pytest.raises(ValueError, match=r"tensor 'head.weight' is missing from \['t1'\].*strict=False"):
        core({"t0": tasks["t0"], "t1": missing}, base, TA)
    with pytest.raises(ValueError, match="t1 holds tensors that base lacks: \\['extra'\\]"):
        core({"t0": tasks["t0"], "t1": dict(tasks["t1"], extra=torch.ones(1))}, base, TA)


def test_a_non_finite_checkpoint_is_named_and_no_file_is_written(tmp_path):
    base, tasks = random_models(n_tasks=2)
    tasks["t1"]["head.weight"][1, 2, 3] = float("nan")
    out = tmp_path / "merged.safetensors"
    for options in (TA, TIES, DARE):
        with pytest.raises(ValueError, match=r"merging tensor 'head.weight' gave non-finite values .*\['t1'\] hold NaN or infinite"):
            core(tasks, base, options, out=out)
    assert not out.exists()


def test_without_strict_a_missing_tensor_is_taken_from_the_base():
    base, tasks = random_models(n_tasks=2)
    tasks["t1"] = {k: v for k, v in tasks["t1"].items() if k != "head.weight"}
    merged = core(tasks, base, TA, strict=False)
    assert torch.equal(merged["head.weight"], base["head.weight"])
    assert not torch.equal(merged["encoder.weight"], base["encoder.weight"])


def test_non_floating_buffers_are_copied_when_equal_and_named_when_not():
    base, tasks = random_models(n_tasks=2)
    assert torch.equal(core(tasks, base, TA)["position_ids"], base["position_ids"])
    tasks["t1"]["position_ids"] = torch.arange(7).flip(0)
    with pytest.raises(ValueError, match="non-floating tensor 'position_ids' differs between base and t1"):
        core(tasks, base, TA)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_merges_in_float32_and_is_written_back(dtype, tmp_path):
    base, tasks = random_models(dtype=dtype)
    widened = lambda sd: {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    reference = core({n: widened(sd) for n, sd in tasks.items()}, widened(base), TIES)
    merged = core(tasks, base, TIES)
    assert_close(merged, {k: v.to(dtype) if v.is_floating_point() else v for k, v in reference.items()}, atol=0)
    out = core(tasks, base, TIES, out=tmp_path / "m.safetensors", out_dtype=torch.float32)
    written = load_file(str(out))
    assert_close({k: written[k] for k in reference}, reference, atol=0)


def test_an_interrupted_merge_leaves_no_file_and_keeps_the_previous_one(tmp_path):
    base, tasks = random_models(n_tasks=2)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(ValueError, match="no weights for tensor 'encoder.bias'"):
        core(tasks, base, MergeOptions(weights={"encoder.weight": [1, 1]}), out=out)
    assert list(tmp_path.iterdir()) == []
    core(tasks, base, TA, out=out)
    before = out.read_bytes()
    checkpoint = open_weights(base, "base")
    plans = plan([checkpoint], None)

    def interrupted():
        yield base["encoder.weight"]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_safetensors(out, plans, interrupted())
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["merged.safetensors"]


def test_a_safetensors_checkpoint_takes_shapes_from_its_header_and_reads_one_tensor(tmp_path):
    base, tasks = random_models(n_tasks=1)
    _, (task_path,) = save_all(tmp_path, base, tasks)
    checkpoint = open_weights(task_path)
    assert checkpoint.spec("head.weight") == ((2, 3, 4), torch.float32)
    assert torch.equal(checkpoint["head.weight"], tasks["t0"]["head.weight"])


# ---- TALL masks and Consensus merging ----

def test_tall_masks_follow_the_definition_and_are_bit_packed(tmp_path):
    base, tasks = random_models()
    merged = core(tasks, base, MergeOptions(lam=1.0))
    lambdas = [0.2, 0.4, 0.6]
    masks = tall_masks(base, tasks, merged, lambdas)
    for key in SHAPES:
        tau = torch.stack([sd[key] - base[key] for sd in tasks.values()])
        tau_mtl = merged[key] - base[key]
        expected = tau.abs() > torch.tensor(lambdas).view(-1, *[1] * (tau.dim() - 1)) * (tau_mtl - tau).abs()
        assert torch.equal(masks[key], expected)
        assert masks.packed[key].dtype == torch.uint8 and masks.packed[key].shape == (3, -(-base[key].numel() // 8))
    assert "position_ids" not in masks.shapes
    back = TaskMasks.load(masks.save(tmp_path / "masks.safetensors"))
    assert back.tasks == masks.tasks and all(torch.equal(back[k], masks[k]) for k in SHAPES)


def test_retrieval_and_consensus_at_their_extremes():
    base, tasks = random_models()
    merged = core(tasks, base, MergeOptions(lam=1.0))
    all_on = tall_masks(base, tasks, merged, 0.0)
    assert_close(retrieve(base, merged, all_on, "t1"), merged)
    masks = tall_masks(base, tasks, merged, 0.4)
    assert_close(consensus_merge(base, merged, masks, k=0), merged)
    assert_close(consensus_merge(base, merged, masks, k=4), base)
    retrieved = retrieve(base, merged, masks, "t2")
    for key in SHAPES:
        m = masks[key][2]
        assert torch.equal(retrieved[key][m], merged[key][m]) and torch.equal(retrieved[key][~m], base[key][~m])
    with pytest.raises(ValueError, match="no mask for task 't9'"):
        retrieve(base, merged, masks, "t9")


def test_tall_lambdas_are_chosen_per_task_by_the_score():
    base, tasks = random_models()
    merged = core(tasks, base, MergeOptions(lam=1.0))

    def closeness(task, state_dict):  # higher when the retrieved model is nearer the task's own model
        return -sum(float((state_dict[k] - tasks[task][k]).norm()) for k in SHAPES)

    masks, scores = choose_tall_lambdas(base, tasks, merged, closeness)
    assert scores.dims == ("task", "lam") and scores.sizes == {"task": 3, "lam": 5}
    chosen = [float(scores.lam[int(scores.sel(task=t).argmax("lam"))]) for t in tasks]
    assert scores.attrs["chosen"] == chosen
    expected = tall_masks(base, tasks, merged, chosen)
    assert all(torch.equal(masks[k], expected[k]) for k in SHAPES)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="density must be in"):
        MergeOptions(density=0.0)
    with pytest.raises(ValueError, match="combine must be one of"):
        MergeOptions(combine="median")
    with pytest.raises(ValueError, match="dropping replaces magnitude trimming"):
        MergeOptions(drop=0.5, density=0.2)
    with pytest.raises(ValueError, match="unknown merge 'tie'; available: .*'ties'"):
        make_merge("tie")
    with pytest.raises(ValueError, match="merge 'ties' has no options \\['densty'\\]; its options: lam=1.0, density=0.2"):
        make_merge("ties", densty=0.1)
    base, tasks = random_models()
    with pytest.raises(ValueError, match="need a base model"):
        core(tasks, None, TIES)
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        core(tasks, base, MergeOptions(weights=[1, 2]))


# ---- thresholds, chunking, dropping rate ----

def many_entries(n_tasks, n, seed, ties=False):
    """A base and task tensors of n entries; with ``ties`` the task vectors take few distinct magnitudes."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    noise = [torch.randint(-3, 4, (n,), generator=g).float() / 8 if ties else torch.randn(n, generator=g) * 0.01 for _ in range(n_tasks)]
    return base, [base + d for d in noise]


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 1000), density=st.sampled_from([0.01, 0.2, 0.5, 0.9, 1.0]), ties=st.booleans(), sample=st.sampled_from([16, 1 << 15]))
def test_thresholds_are_the_kth_largest_magnitude_whatever_the_sample(seed, density, ties, sample):
    # 300k entries: more than EXACT_UP_TO, so the sampled bracket is used; a 16-point sample often misses and falls back
    base, tasks = many_entries(2, 300_000, seed, ties)
    checkpoints = [open_weights({"w": t}, f"t{i}") for i, t in enumerate(tasks)]
    thresholds = magnitude_thresholds(open_weights({"w": base}), checkpoints, ["w"], density, sample=sample)
    k = int(density * 300_000)
    for threshold, task in zip(thresholds, tasks):
        assert threshold == (task - base).abs().sort(descending=True).values[k - 1]


DARE_TIES = MergeOptions(drop=0.5, elect_sign=True, lam=0.3)


@pytest.mark.parametrize("options", [TA, MergeOptions(density=0.2, trim="tensor", elect_sign=True, combine="mean"), TIES, DARE, MergeOptions(drop=0.5, lam=0.3, rescale="l1"), DARE_TIES], ids=repr)
def test_the_chunk_size_does_not_change_a_merge(monkeypatch, tmp_path, options):
    base, tasks = random_models()
    base_path, task_paths = save_all(tmp_path, base, tasks)
    whole = core(tasks, base, options)
    monkeypatch.setattr("workbench.weights.task_vectors.CHUNK", 6)  # rounded down to 4 entries per chunk
    chunked = core(task_paths, base_path, options)
    assert_close({key: chunked[key] for key in whole}, whole)


def test_dare_drops_the_asked_fraction():
    base, tasks = many_entries(1, 200_000, 0)
    merged = merge_tensor(base, tasks, MergeOptions(drop=0.3, seed=5))
    dropped = float((merged == base).float().mean())
    assert abs(dropped - 0.3) < 5 * (0.3 * 0.7 / 200_000) ** 0.5


def test_a_half_precision_merge_that_overflows_its_dtype_is_refused_naming_it(tmp_path):
    base = {"w": torch.zeros(4, dtype=torch.float16)}
    tasks = {f"t{i}": {"w": torch.full((4,), 40000.0, dtype=torch.float16)} for i in range(2)}
    out = tmp_path / "merged.safetensors"
    for target in (None, out):
        with pytest.raises(ValueError, match=r"tensor 'w' gave values beyond the range of torch.float16 .*largest magnitude 8e\+04"):
            core(tasks, base, MergeOptions(lam=1.0), out=target)
    assert not out.exists()
    written = load_file(str(core(tasks, base, MergeOptions(lam=1.0), out=out, out_dtype=torch.float32)))
    assert torch.equal(written["w"], torch.full((4,), 80000.0))


def test_a_non_finite_tensor_taken_from_the_base_is_refused_naming_it(tmp_path):
    base, tasks = random_models(n_tasks=2)
    base["head.weight"][0, 0, 0] = float("inf")
    tasks["t1"] = {k: v for k, v in tasks["t1"].items() if k != "head.weight"}
    out = tmp_path / "merged.safetensors"
    with pytest.raises(ValueError, match=r"tensor 'head.weight', taken unchanged from base, holds NaN or infinite"):
        core(tasks, base, TA, strict=False, out=out)
    assert not out.exists()


def test_model_wide_trimming_of_a_truncated_checkpoint_names_the_file(tmp_path):
    base, tasks = random_models(n_tasks=2)
    paths = {}
    for name, sd in {"base": base, **tasks}.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(sd, str(paths[name]))
    paths["t1"].write_bytes(paths["t1"].read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"t1.safetensors ends inside tensor"):
        core({"t0": paths["t0"], "t1": paths["t1"]}, paths["base"], TIES, out=tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()


def test_a_truncated_pickle_names_the_file(tmp_path):
    base, _ = random_models()
    path = tmp_path / "model.pt"
    torch.save(base, path)
    whole = path.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 30, 100):
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=r"model.pt cannot be read as a PyTorch checkpoint"):
            open_weights(path)
