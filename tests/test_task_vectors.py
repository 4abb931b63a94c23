"""Task-vector probes: cosines and norms against the flattened vectors, sign conflicts and mask overlap on known cases."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_merge import SHAPES, random_models
from workbench.weights import TaskMasks, open_weights, task_vector_chunks
from workbench.weights.task_vectors import streaming_threads
from workbench.probes import mask_overlap, task_vector_similarity


def flat(sd, base):
    return torch.cat([(sd[k] - base[k]).double().flatten() for k in SHAPES])


def test_cosines_and_norms_equal_those_of_the_flattened_task_vectors():
    base, tasks = random_models(n_tasks=3)
    ds = task_vector_similarity(tasks, base, progress=False)
    assert ds.cosine.dims == ("task", "other_task") and ds.layer_cosine.dims == ("layer", "task", "other_task")
    assert list(ds.layer.values) == list(SHAPES)  # the integer buffer is not a layer of task vectors
    vectors = torch.stack([flat(sd, base) for sd in tasks.values()])
    np.testing.assert_allclose(ds.norm.values, vectors.norm(dim=1).numpy(), rtol=1e-6)
    cos = torch.nn.functional.cosine_similarity(vectors[:, None], vectors[None], dim=-1)
    np.testing.assert_allclose(ds.cosine.values, cos.numpy(), atol=1e-6)
    layer = torch.stack([(sd["encoder.bias"] - base["encoder.bias"]).double() for sd in tasks.values()])
    np.testing.assert_allclose(
        ds.layer_cosine.sel(layer="encoder.bias").values,
        torch.nn.functional.cosine_similarity(layer[:, None], layer[None], dim=-1).numpy(), atol=1e-6,
    )


@settings(deadline=None)
@given(seed=st.integers(0, 100), scale=st.floats(0.1, 10))
def test_cosine_is_symmetric_bounded_and_blind_to_a_task_vectors_scale(seed, scale):
    base, tasks = random_models(n_tasks=3, seed=seed)
    ds = task_vector_similarity(tasks, base, progress=False)
    cos = ds.cosine.values
    np.testing.assert_allclose(cos, cos.T, atol=1e-12)
    np.testing.assert_allclose(np.diagonal(cos), 1, atol=1e-6)
    assert (np.abs(cos) <= 1 + 1e-9).all()
    stretched = dict(tasks, t0={k: base[k] + scale * (v - base[k]) if v.is_floating_point() else v for k, v in tasks["t0"].items()})
    np.testing.assert_allclose(task_vector_similarity(stretched, base, progress=False).cosine.values, cos, atol=1e-5)


def test_sign_conflict_counts_opposite_signs_among_coordinates_both_keep():
    base = {"w": torch.zeros(4)}
    tasks = {"a": {"w": torch.tensor([1.0, -1.0, 2.0, 0.0])}, "b": {"w": torch.tensor([-1.0, -1.0, 0.0, 3.0])}}
    ds = task_vector_similarity(tasks, base, density=1.0, progress=False)
    # both non-zero on coordinates 0 and 1; they disagree on 0
    assert ds.sign_conflict.sel(task="a", other_task="b") == 0.5
    assert ds.sign_conflict.sel(task="a", other_task="a") == 0
    trimmed = task_vector_similarity(tasks, base, density=0.25, progress=False)  # a keeps 2.0, b keeps 3.0: no overlap
    assert np.isnan(trimmed.sign_conflict.sel(task="a", other_task="b"))


def test_a_zero_task_vector_has_missing_cosines():
    base, tasks = random_models(n_tasks=2)
    tasks["t1"] = base
    ds = task_vector_similarity(tasks, base, progress=False)
    assert ds.norm.sel(task="t1") == 0 and np.isnan(ds.cosine.sel(task="t0", other_task="t1"))


def test_mask_overlap_counts_and_jaccard_on_known_masks():
    masks = TaskMasks.pack(["a", "b", "c"], {
        "w": torch.tensor([[1, 1, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 1, 0]], dtype=torch.bool),
        "v": torch.tensor([[0, 0], [0, 1], [0, 1]], dtype=torch.bool),
    })
    ds = mask_overlap(masks)
    assert ds.layer_count.sel(layer="w").values.tolist() == [1, 2, 1, 1]
    assert ds["count"].values.tolist() == [2, 2, 2, 1]
    assert (int(ds.catastrophic), int(ds.selfish), int(ds.consensus)) == (2, 2, 3)
    assert ds.selfish_by_task.values.tolist() == [1, 0, 1]
    assert ds.jaccard.sel(task="a", other_task="b") == 2 / 4  # a = {w0, w1, w4}, b = {w0, w4, v1}
    np.testing.assert_allclose(np.diagonal(ds.jaccard.values), 1)


def test_chunks_read_ahead_from_files_equal_those_of_the_tensors_in_memory(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr("workbench.weights.task_vectors.READ_CHUNKS", 3)  # blocks of 3 chunks: several blocks per tensor
    base, tasks = random_models(n_tasks=3)
    save_file(base, str(tmp_path / "base.safetensors"))
    for name, sd in tasks.items():
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
    in_memory = [open_weights(base, "base"), [open_weights(sd, name) for name, sd in tasks.items()]]
    on_disk = [open_weights(tmp_path / "base.safetensors"), [open_weights(tmp_path / f"{name}.safetensors") for name in tasks]]
    for key in SHAPES:
        expected = [(a, b, t0.clone(), tau.clone()) for a, b, t0, tau in task_vector_chunks(*in_memory, key, chunk=4)]
        read = [(a, b, t0.clone(), tau.clone()) for a, b, t0, tau in task_vector_chunks(*on_disk, key, chunk=4)]
        assert len(read) == len(expected) > 1
        for (a, b, t0, tau), (a2, b2, t02, tau2) in zip(read, expected):
            assert (a, b) == (a2, b2) and torch.equal(t0, t02) and torch.equal(tau, tau2)


def test_a_read_ahead_stopped_early_leaves_no_reading_thread(tmp_path, monkeypatch):
    import threading

    from safetensors.torch import save_file

    monkeypatch.setattr("workbench.weights.task_vectors.READ_CHUNKS", 1)

    base, tasks = random_models(n_tasks=2)
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tasks["t0"], str(tmp_path / "t0.safetensors"))
    key = max(SHAPES, key=lambda k: base[k].numel())
    chunks = task_vector_chunks(open_weights(tmp_path / "base.safetensors"), [open_weights(tmp_path / "t0.safetensors")], key, chunk=4)
    next(chunks)
    assert any(t.name.startswith("workbench-read") for t in threading.enumerate())
    chunks.close()
    assert not any(t.name.startswith("workbench-read") for t in threading.enumerate())


def test_streaming_threads_leave_a_core_to_the_reads_and_give_it_back(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    before = torch.get_num_threads()
    save_file({"w": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    with streaming_threads([open_weights({"w": torch.ones(3)}), None]):
        assert torch.get_num_threads() == before  # nothing read from disk
    with streaming_threads([open_weights(tmp_path / "w.safetensors")]):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 10_000), double=st.booleans())
def test_magnitude_bits_order_as_the_magnitudes_do(seed, double):
    from workbench.weights.task_vectors import magnitude_bits

    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    values = torch.cat([torch.randn(200, generator=g, dtype=dtype).abs(), torch.zeros(5, dtype=dtype),
                        torch.full((5,), torch.finfo(dtype).tiny / 4, dtype=dtype), torch.full((5,), 3.0, dtype=dtype)])  # zeros, subnormals, ties
    bits = magnitude_bits(values)
    assert np.array_equal(np.sort(bits).view(values.numpy().dtype), np.sort(values.numpy()))


def test_magnitude_bits_refuse_a_dtype_they_cannot_read():
    from workbench.weights.task_vectors import magnitude_bits

    with pytest.raises(TypeError, match="float32 or float64 magnitudes, got torch.bfloat16"):
        magnitude_bits(torch.ones(3, dtype=torch.bfloat16))


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 10_000), n=st.sampled_from([50, 300_000]), sample=st.sampled_from([16, 1 << 15]), ties=st.booleans(),
       double=st.booleans(), data=st.data())
def test_sorted_places_are_those_of_the_sorted_values_whatever_the_sample(seed, n, sample, ties, double, data):
    from workbench.weights.task_vectors import sorted_places

    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=g, dtype=torch.float64 if double else torch.float32).abs()
    if ties:
        values = values.mul(4).round()  # many entries tied at each value
    places = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    expected = values.sort().values[places]
    assert torch.equal(sorted_places(values, places, sample=sample, seed=seed), expected)
