"""Crafted safetensors files: the workbench accepts and refuses exactly what the ``safetensors`` library does, and reads the same bytes."""

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from workbench.merge.arithmetic import MergeOptions, merge_task_vectors
from workbench.weights.safetensors_format import DTYPES
from workbench.weights.state_dicts import open_weights


def craft(path, header, data: bytes = b"", raw: bytes | None = None):
    encoded = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def reference_reads(path) -> dict | None:
    """Every tensor as the safetensors library reads it, or None when it refuses the file."""
    try:
        with safe_open(str(path), "pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}
    except Exception:  # noqa: BLE001 - the library raises its own error type (and others) for a bad file
        return None


def workbench_reads(path) -> dict | None:
    """Every tensor as the workbench reads it, or None when it refuses the file with a ValueError naming it."""
    try:
        weights = open_weights(path)
        return {key: weights[key] for key in weights.keys()}
    except ValueError as error:
        assert str(path) in str(error), f"the refusal names no file: {error}"
        return None


def assert_same_verdict(path):
    expected, got = reference_reads(path), workbench_reads(path)
    assert (expected is None) == (got is None), f"safetensors {'refuses' if expected is None else 'accepts'} it, the workbench does not"
    if expected is not None:
        assert list(got) == list(expected) or sorted(got) == sorted(expected)
        for key, tensor in expected.items():
            assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape
            assert torch.equal(got[key].view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8)), key


def f32(shape, start, end):
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


CASES = {
    "overlapping tensors": ({"w": f32([4, 8], 0, 128), "b": f32([8], 96, 128)}, 128),
    "two tensors": ({"w": f32([4, 8], 0, 128), "b": f32([8], 128, 160)}, 160),
    "listed out of order": ({"b": f32([8], 128, 160), "w": f32([4, 8], 0, 128)}, 160),
    "a span shorter than its shape": ({"w": f32([4, 8], 0, 64)}, 64),
    "bytes after the last tensor": ({"w": f32([2], 0, 8)}, 16),
    "truncated": ({"w": f32([4], 0, 16)}, 8),
    "a gap before the first tensor": ({"w": f32([2], 8, 16)}, 16),
    "a JSON list": ([1, 2], 0),
    "an entry without data_offsets": ({"w": {"dtype": "F32", "shape": [2]}}, 8),
    "an entry without a dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, 8),
    "an unknown dtype": ({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, 8),
    "a lower-case dtype": ({"w": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}, 8),
    "a dtype that is a list": ({"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, 8),
    "metadata of strings": ({"__metadata__": {"a": "b"}, "w": f32([2], 0, 8)}, 8),
    "metadata with a number": ({"__metadata__": {"a": 1}, "w": f32([2], 0, 8)}, 8),
    "null metadata": ({"__metadata__": None, "w": f32([2], 0, 8)}, 8),
    "metadata that is a list": ({"__metadata__": ["a"], "w": f32([2], 0, 8)}, 8),
    "no tensors": ({}, 0),
    "only metadata": ({"__metadata__": {"a": "b"}}, 0),
    "an empty tensor": ({"w": f32([0, 3], 0, 0)}, 0),
    "a negative dimension": ({"w": f32([-2], 0, 8)}, 8),
    "a float dimension": ({"w": f32([2.0], 0, 8)}, 8),
    "a boolean dimension": ({"w": f32([True], 0, 4)}, 4),
    "an extra field": ({"w": {**f32([2], 0, 8), "note": 1}}, 8),
    "reversed offsets": ({"w": f32([0], 8, 0)}, 8),
    "three offsets": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, 8),
    "offsets as strings": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, 8),
    "an entry that is a list": ({"w": [1]}, 8),
    "an entry that is a string": ({"w": "F32"}, 8),
    "a shape too large for the format": ({"w": f32([2**40, 2**40], 0, 8)}, 8),
    "float8, unsigned and complex dtypes": (
        {"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}, "b": {"dtype": "U32", "shape": [2], "data_offsets": [2, 10]},
         "c": {"dtype": "C64", "shape": [1], "data_offsets": [10, 18]}, "d": {"dtype": "U64", "shape": [1], "data_offsets": [18, 26]}}, 26,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_crafted_header_gets_the_verdict_of_the_reference_library(tmp_path, case):
    header, size = CASES[case]
    assert_same_verdict(craft(tmp_path / "model.safetensors", header, bytes(range(256)) * (size // 256) + bytes(range(size % 256))))


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b' {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}  ',
                                 b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', b'{"w": 1} x'])
def test_a_header_that_is_not_plain_json_gets_the_verdict_of_the_reference_library(tmp_path, raw):
    assert_same_verdict(craft(tmp_path / "model.safetensors", None, bytes(8), raw=raw))


def test_refusals_name_the_file_and_the_tensor(tmp_path):
    path = craft(tmp_path / "model.safetensors", {"w": f32([4, 8], 0, 128), "b": f32([8], 96, 128)}, bytes(128))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'b' has data_offsets \[96, 128\]"):
        open_weights(path)
    path = craft(tmp_path / "model.safetensors", {"w": {"dtype": "F32", "shape": [2]}}, bytes(8))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'w': its header entry lacks \['data_offsets'\]"):
        open_weights(path)
    path = craft(tmp_path / "model.safetensors", [1, 2])
    with pytest.raises(ValueError, match=r"model.safetensors: the safetensors header is a JSON list, not an object"):
        open_weights(path)


def test_a_packed_dtype_is_refused_by_name(tmp_path):
    path = craft(tmp_path / "model.safetensors", {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(ValueError, match="dtype F4, packed below a byte per entry"):
        open_weights(path)


def test_a_merge_of_overlapping_tensors_writes_nothing(tmp_path):
    base = craft(tmp_path / "base.safetensors", {"w": f32([4, 8], 0, 128), "b": f32([8], 96, 128)}, bytes(128))
    task = craft(tmp_path / "task.safetensors", {"w": f32([4, 8], 0, 128), "b": f32([8], 128, 160)}, bytes(160))
    with pytest.raises(ValueError, match="tensor 'b' has data_offsets"):
        merge_task_vectors(base, [task], MergeOptions(), out=tmp_path / "merged.safetensors", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "task.safetensors"]


CODES = ["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E5M2", "U16", "C64", "X9"]
_itemsize = {code: (DTYPES[code].itemsize if code in DTYPES else 4) for code in CODES}


@st.composite
def crafted_files(draw):
    """A header and data: valid ones, and ones with one thing wrong (a shifted offset, a missing field, a bad dtype ...)."""
    n = draw(st.integers(0, 4))
    codes = draw(st.lists(st.sampled_from(CODES[:-1]), min_size=n, max_size=n))
    shapes = draw(st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=n, max_size=n))
    order = draw(st.permutations(range(n)))
    entries, position = {}, 0
    for i in order:
        size = _itemsize[codes[i]] * int(torch.Size(shapes[i]).numel())
        entries[f"t{i}"] = {"dtype": codes[i], "shape": shapes[i], "data_offsets": [position, position + size]}
        position += size
    header = {f"t{i}": entries[f"t{i}"] for i in range(n)}  # listed in name order, stored in another
    data_bytes = position
    fault = draw(st.sampled_from(["none", "none", "offset", "length", "field", "dtype", "shape", "metadata", "swap"]))
    if fault == "offset" and n:
        entry = header[f"t{draw(st.integers(0, n - 1))}"]
        entry["data_offsets"][draw(st.integers(0, 1))] += draw(st.integers(-3, 3))
        if min(entry["data_offsets"]) < 0:
            entry["data_offsets"] = [0, 0]
    elif fault == "length":
        data_bytes = max(0, data_bytes + draw(st.integers(-3, 3)))
    elif fault == "field" and n:
        del header[f"t{draw(st.integers(0, n - 1))}"][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif fault == "dtype" and n:
        header[f"t{draw(st.integers(0, n - 1))}"]["dtype"] = draw(st.sampled_from(["X9", "f32", "F32", 3, ["F32"], None]))
    elif fault == "shape" and n:
        header[f"t{draw(st.integers(0, n - 1))}"]["shape"].append(draw(st.sampled_from([-1, 1.5, True, 1, "2"])))
    elif fault == "metadata":
        header["__metadata__"] = draw(st.sampled_from([{"k": "v"}, {"k": 1}, None, [], "text"]))
    elif fault == "swap" and n >= 2:
        a, b = draw(st.permutations(range(n)))[:2]
        header[f"t{a}"]["data_offsets"], header[f"t{b}"]["data_offsets"] = header[f"t{b}"]["data_offsets"], header[f"t{a}"]["data_offsets"]
    data = draw(st.binary(min_size=data_bytes, max_size=data_bytes))
    return header, data


@settings(deadline=None)
@given(crafted=crafted_files())
def test_every_crafted_file_gets_the_verdict_and_the_bytes_of_the_reference_library(tmp_path_factory, crafted):
    header, data = crafted
    assert_same_verdict(craft(tmp_path_factory.mktemp("crafted") / "model.safetensors", header, data))
