"""Checkpoint trees in safetensors: round trips, refusals, atomic writes."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.weights.trees import load_tree, save_tree

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=5),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), max_size=4).map(torch.tensor),
)
trees = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), inner, max_size=3)), max_leaves=12)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@settings(deadline=None)
@given(tree=trees)
def test_any_tree_comes_back_as_it_was(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("trees") / "t.safetensors"
    save_tree(tree, path)
    assert _same(load_tree(path), tree)


def test_optimizer_state_numpy_dtypes_and_devices_round_trip(tmp_path):
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([parameter])
    parameter.grad = torch.ones(3)
    optimizer.step()
    tree = {"optimizer": optimizer.state_dict(), "array": np.arange(4.0), "words": np.array(["a", "b"]), "key": (3, torch.float32, torch.device("cpu"))}
    save_tree(tree, tmp_path / "c.safetensors")
    back = load_tree(tmp_path / "c.safetensors")
    assert list(back["optimizer"]["state"]) == [0] and torch.equal(back["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    np.testing.assert_array_equal(back["array"], np.arange(4.0))
    assert back["words"].tolist() == ["a", "b"] and back["key"] == (3, torch.float32, torch.device("cpu"))


def test_a_pickle_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "run.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ValueError, match="not a workbench checkpoint.*Pickled checkpoints are not loaded"):
        load_tree(path)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="safetensors file but not a workbench checkpoint"):
        load_tree(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_tree(tmp_path / "missing.safetensors")


def test_an_unsupported_value_is_named_and_the_previous_file_kept(tmp_path):
    path = tmp_path / "c.safetensors"
    save_tree({"step": 1}, path)
    with pytest.raises(TypeError, match=r"cannot hold object at \.method\.solver"):
        save_tree({"step": 2, "method": {"solver": object()}}, path)
    assert load_tree(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
