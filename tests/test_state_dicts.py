"""Weights reading: ranges and gathers from safetensors files and memory, dtypes, truncated files."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from workbench.weights.state_dicts import MemoryWeights, SafetensorsWeights, open_weights


def saved(tmp_path, tensors):
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.bool])
def test_a_file_reads_ranges_gathers_and_whole_tensors_as_stored(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": (torch.randn(7, 9, generator=g) * 5).to(dtype), "b": (torch.randn(13, generator=g) * 5).to(dtype)}
    checkpoint = open_weights(saved(tmp_path, tensors))
    assert isinstance(checkpoint, SafetensorsWeights)
    for key, tensor in tensors.items():
        flat = tensor.reshape(-1)
        assert torch.equal(checkpoint[key], tensor)
        assert torch.equal(checkpoint.read(key, 3, 11), flat[3:11])
        index = torch.tensor([0, 5, 5, 12, 2])
        assert torch.equal(checkpoint.gather(key, index), flat[index])


@settings(deadline=None, max_examples=30)
@given(start=st.integers(0, 60), length=st.integers(0, 40), as_float=st.booleans())
def test_reading_into_a_buffer_equals_slicing_in_memory_and_on_disk(tmp_path_factory, start, length, as_float):
    tensor = torch.arange(100, dtype=torch.bfloat16) / 7
    path = saved(tmp_path_factory.mktemp("read"), {"w": tensor})
    stop = min(100, start + length)
    expected = tensor[start:stop].float() if as_float else tensor[start:stop]
    for checkpoint in (open_weights(path), MemoryWeights("memory", {"w": tensor})):
        out = torch.empty(stop - start, dtype=expected.dtype)
        assert torch.equal(checkpoint.read("w", start, stop, out=out), expected)


def test_a_truncated_file_names_itself_and_the_tensor(tmp_path):
    path = saved(tmp_path, {"w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model.safetensors ends inside tensor 'w'"):
        open_weights(path)["w"]


def test_not_a_safetensors_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00nope")
    with pytest.raises(ValueError, match="not a safetensors file"):
        open_weights(path)


def test_a_file_truncated_after_it_was_opened_names_itself_when_gathered(tmp_path):
    path = saved(tmp_path, {"w": torch.ones(1000)})
    checkpoint = open_weights(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model.safetensors ends inside tensor 'w'"):
        checkpoint.gather("w", torch.tensor([0, 999]))
